//! Lab ClickHouse: a private server on 127.0.0.1 (HTTP 18123, native TCP 19000, interserver
//! 19009) with a standalone config under `.lab/clickhouse/` — the system config in
//! `/etc/clickhouse-server` is never read. The password is stored only as a SHA-256 hash in
//! `users.xml` (mode 0600) and never appears on a command line.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use super::Settings;
use crate::lab::process::{Daemon, on_path};
use crate::lab::{Lab, Recipe};
use crate::systems::toolkit::{ServerKeys, lab_section};

/// Loopback HTTP port of the lab server.
pub const HTTP_PORT: u16 = 18123;
/// Loopback native-protocol port (clickhouse-client).
pub const TCP_PORT: u16 = 19000;
/// Loopback interserver port (unused by a single server, but it must not collide).
pub const INTERSERVER_PORT: u16 = 19009;
/// User the lab creates.
pub const USER: &str = "dedup_lab";

/// The ClickHouse lab server.
pub struct ClickHouse;

fn daemon(lab: &Lab) -> Daemon {
    Daemon {
        dir: lab.server_dir("clickhouse"),
        program: "clickhouse-server",
    }
}

/// `<yandex>` is the root element 18.16 requires; newer servers still accept it.
fn config_xml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"<?xml version="1.0"?>
<yandex>
    <!-- Warnings and errors go to the console, which the lab keeps in server.log. -->
    <logger><level>warning</level><console>1</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{HTTP_PORT}</http_port>
    <tcp_port>{TCP_PORT}</tcp_port>
    <interserver_http_port>{INTERSERVER_PORT}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>268435456</mark_cache_size>
    <path>{d}/data/</path>
    <tmp_path>{d}/data/tmp/</tmp_path>
    <user_files_path>{d}/data/user_files/</user_files_path>
    <format_schema_path>{d}/data/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <max_table_size_to_drop>0</max_table_size_to_drop>
    <max_partition_size_to_drop>0</max_partition_size_to_drop>
    <!-- Remove parts replaced by merges and mutations within ~2 s instead of 8 min. -->
    <merge_tree>
        <old_parts_lifetime>1</old_parts_lifetime>
        <cleanup_delay_period>1</cleanup_delay_period>
        <cleanup_delay_period_random_add>0</cleanup_delay_period_random_add>
    </merge_tree>
</yandex>
"#
    )
}

/// `default` must exist (the server falls back to it when a request names no user); it gets
/// the same password as the lab user.
fn users_xml(password_sha256: &str) -> String {
    let user = |name: &str| {
        format!(
            "        <{name}><password_sha256_hex>{password_sha256}</password_sha256_hex>\
             <networks><ip>127.0.0.1</ip></networks>\
             <profile>default</profile><quota>default</quota></{name}>\n"
        )
    };
    format!(
        r#"<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users>
{}{}    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
    </interval></default></quotas>
</yandex>
"#,
        user("default"),
        user(USER)
    )
}

/// Whether the server answers `GET /ping` with `Ok.` (needs no credentials).
fn ping() -> bool {
    let answer = || -> std::io::Result<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], HTTP_PORT));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    };
    answer().is_ok_and(|t| t.contains(" 200 ") && t.ends_with("Ok.\n"))
}

impl Recipe for ClickHouse {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["clickhouse-server", "clickhouse-client"]
    }

    fn installed(&self) -> bool {
        on_path("clickhouse-server") && on_path("clickhouse-client")
    }

    fn up(&self, lab: &Lab) -> anyhow::Result<toml::Table> {
        let d = daemon(lab);
        let data = d.dir.join("data");
        std::fs::create_dir_all(&data)?;
        let password_file = lab.secret("clickhouse")?;
        let password = std::fs::read_to_string(&password_file)?;
        let hash: String = Sha256::digest(password.trim().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let config = d.dir.join("config.xml");
        std::fs::write(&config, config_xml(&d.dir))?;
        let users = d.dir.join("users.xml");
        std::fs::write(&users, users_xml(&hash))?;
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600))?;
        let mut cmd = Command::new("clickhouse-server");
        cmd.arg(format!("--config-file={}", config.display()));
        d.start(cmd)?;
        d.wait_ready(Duration::from_secs(60), ping)
            .context("clickhouse")?;
        let keys = ServerKeys {
            port: Some(HTTP_PORT),
            user: Some(USER.into()),
            password_file: Some(password_file),
            ..Default::default()
        };
        Ok(lab_section(&keys, &Settings::default(), &[data]))
    }

    fn down(&self, lab: &Lab) -> anyhow::Result<()> {
        daemon(lab).stop(Duration::from_secs(60))
    }

    fn status(&self, lab: &Lab) -> anyhow::Result<String> {
        Ok(format!(
            "{} on 127.0.0.1:{HTTP_PORT} (HTTP), {TCP_PORT} (native)",
            daemon(lab).status()
        ))
    }
}
