//! What every adapter builds on: the ownership rule and leases ([`ownership`]), config
//! sections and the shared connection keys ([`settings`]), the lab tables of the SQL adapters
//! under a layout ([`tables`]), and the pacing of waits for a server's background work
//! ([`poll`]). Error classification lives with the error types
//! ([`crate::model::SysError::from_driver`]); each adapter decides from its driver's error
//! codes whether a connection was lost.

pub mod ownership;
pub mod poll;
pub mod settings;
pub mod tables;
pub mod window;

pub use ownership::{Holding, LAB_PREFIX, MARKER_TABLE, Marker, check_namespace};
pub use poll::Pacer;
pub use settings::{
    Namespaced, Server, ServerDefaults, ServerKeys, Target, lab_section, parse, parse_server,
    section_of,
};
pub use tables::{Tables, container_name};
pub use window::{Window, spawned};
