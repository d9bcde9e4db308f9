//! The `native` probe: the system's own size function (`pg_total_relation_size`, InnoDB's
//! `ALLOCATED_SIZE`, `system.parts`, `MEMORY USAGE`, DescribeLogDirs, span statistics, …),
//! for the systems that have one.

use async_trait::async_trait;

use super::{Built, Probe, ProbeContext, ProbeDef};
use crate::model::{ErrorKind, Measured, Reading, SysError};

/// Registry entry.
pub const DEF: ProbeDef = ProbeDef {
    name: "native",
    key: None,
    key_help: "",
    about: "the system's own size function",
    build,
};

fn build(_: &ProbeContext<'_>) -> Built {
    Ok(Some(Box::new(Native)))
}

struct Native;

#[async_trait]
impl Probe for Native {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn applies(&self, sys: &dyn Measured) -> bool {
        sys.native_copies().is_some()
    }

    fn copies(&self, sys: &dyn Measured) -> u32 {
        sys.native_copies().unwrap_or(1)
    }

    async fn read(&self, sys: &mut dyn Measured) -> Result<Reading, SysError> {
        match sys.native_size().await {
            Ok(bytes) => Ok(Reading::Bytes { bytes }),
            Err(e) if e.kind == ErrorKind::ConnectionLost => Err(e),
            Err(e) => Ok(Reading::Error { error: e.message }),
        }
    }
}
