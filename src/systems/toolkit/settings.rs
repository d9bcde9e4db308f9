//! Config sections: every adapter's settings are parsed the same way, unknown keys are errors,
//! and the connection and credential keys that server adapters share are one block.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::check_namespace;
use crate::error::usage;
use crate::model::Layout;
use crate::secret::{Secret, SecretSource};
use crate::systems::SystemContext;

/// Parses an instance's config section into its adapter's settings type; unknown keys are
/// errors naming the section.
pub fn parse<T: DeserializeOwned + Default>(
    instance: &str,
    section: Option<&toml::Table>,
) -> anyhow::Result<T> {
    match section {
        None => Ok(T::default()),
        Some(t) => T::deserialize(toml::Value::Table(t.clone())).map_err(|e| {
            usage(format!(
                "config [systems.{instance}]: {}; fix the section (see the README's config \
                 reference)",
                e.to_string().trim()
            ))
        }),
    }
}

/// The connection and credential keys of a server adapter's section, as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerKeys {
    /// Server host; default 127.0.0.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Server port; default: the product's usual port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Account; default: the product's usual administrator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Environment variable holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Seconds to wait for a connection; default 10.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_s: Option<u64>,
}

impl ServerKeys {
    /// The keys this block takes out of a section.
    pub const KEYS: [&'static str; 6] = [
        "host",
        "port",
        "user",
        "password_env",
        "password_file",
        "connect_timeout_s",
    ];
}

/// What a product uses when the section leaves a connection key out.
#[derive(Clone, Copy, Debug)]
pub struct ServerDefaults {
    /// Usual port.
    pub port: u16,
    /// Usual account, if the product has accounts.
    pub user: Option<&'static str>,
}

/// A server's address and credentials, checked and with its secret read.
#[derive(Clone, Debug)]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Account, if any.
    pub user: Option<String>,
    /// Password, if configured.
    pub password: Option<Secret>,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
}

impl Server {
    /// `host:port`, an IPv6 address in brackets.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Settings of a server adapter that name its namespace.
pub trait Namespaced {
    /// The key that names the namespace (`schema`, `database`, `prefix`, …).
    const KEY: &'static str;

    /// The namespace the section names, if it names one.
    fn namespace(&self) -> Option<&str>;
}

/// What a server adapter is built from: its server, its namespace (checked to be lab-owned)
/// and its own settings.
#[derive(Debug)]
pub struct Target<S> {
    /// The server and its credentials.
    pub server: Server,
    /// The namespace's name.
    pub namespace: String,
    /// The adapter's own settings.
    pub settings: S,
    /// What files are stored under and how many containers they go to.
    pub layout: Layout,
}

impl<S: DeserializeOwned + Default + Namespaced> Target<S> {
    /// Parses an instance's section for kind `kind`: the namespace defaults to
    /// [`SystemContext::default_namespace`].
    pub fn of(
        ctx: &SystemContext<'_>,
        kind: &str,
        defaults: ServerDefaults,
    ) -> anyhow::Result<Target<S>> {
        let (server, settings): (Server, S) = parse_server(ctx.instance, ctx.section, defaults)?;
        let namespace = settings
            .namespace()
            .map_or_else(|| ctx.default_namespace(kind), String::from);
        check_namespace(ctx.instance, S::KEY, &namespace)?;
        Ok(Target {
            server,
            namespace,
            settings,
            layout: ctx.layout,
        })
    }
}

/// Parses a server adapter's section: the shared connection keys into a [`Server`] (password
/// read from its environment variable or file), everything else into the adapter's `T`, each
/// with unknown keys refused.
pub fn parse_server<T: DeserializeOwned + Default>(
    instance: &str,
    section: Option<&toml::Table>,
    defaults: ServerDefaults,
) -> anyhow::Result<(Server, T)> {
    let mut rest = section.cloned().unwrap_or_default();
    let mut keys = toml::Table::new();
    for k in ServerKeys::KEYS {
        if let Some(v) = rest.remove(k) {
            keys.insert(k.into(), v);
        }
    }
    let keys: ServerKeys = parse(instance, Some(&keys))?;
    let host = keys.host.unwrap_or_else(|| "127.0.0.1".into());
    if host.is_empty() || host.contains(['@', '/', '?', '#', ' ']) {
        return Err(usage(format!(
            "config [systems.{instance}] host = \"{}\" is not a host name; give the host alone \
             (credentials belong in user and password_env or password_file)",
            crate::secret::redact(&host)
        )));
    }
    let password = SecretSource::from_keys(keys.password_env, keys.password_file)
        .resolve(&format!("config [systems.{instance}] password"))?;
    let server = Server {
        host,
        port: keys.port.unwrap_or(defaults.port),
        user: keys.user.or(defaults.user.map(String::from)),
        password,
        connect_timeout: Duration::from_secs(keys.connect_timeout_s.unwrap_or(10)),
    };
    Ok((server, parse(instance, Some(&rest))?))
}

/// A section as the lab writes it: the keys of each part whose values differ from the
/// part's defaults, so that a generated config says only what it sets.
pub fn section_of(parts: &[&dyn erased::Part]) -> toml::Table {
    let mut out = toml::Table::new();
    for p in parts {
        out.extend(p.non_default());
    }
    out
}

/// The section a lab recipe writes for a server on loopback: its connection keys (the host
/// always named, so that tools reading the section need no defaults), the adapter's own
/// settings that differ from their defaults, and the `fs` probe over the server's data
/// directories.
pub fn lab_section(keys: &ServerKeys, own: &dyn erased::Part, data: &[PathBuf]) -> toml::Table {
    let keys = ServerKeys {
        host: Some(keys.host.clone().unwrap_or_else(|| "127.0.0.1".into())),
        ..keys.clone()
    };
    let mut t = section_of(&[&keys, own]);
    t.extend([crate::probe::setting(crate::probe::fs::KEY, &data)]);
    t
}

/// Object-safe access to typed settings for [`section_of`].
pub mod erased {
    use serde::Serialize;

    /// A typed settings value that can list its non-default keys.
    pub trait Part {
        /// Its keys whose values differ from `Default`.
        fn non_default(&self) -> toml::Table;
    }

    impl<T: Serialize + Default> Part for T {
        fn non_default(&self) -> toml::Table {
            let table = |v: &T| match toml::Value::try_from(v) {
                Ok(toml::Value::Table(t)) => t,
                _ => toml::Table::new(),
            };
            let default = table(&T::default());
            table(self)
                .into_iter()
                .filter(|(k, v)| default.get(k) != Some(v))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Own {
        database: Option<String>,
        retries: u32,
    }

    const DEFAULTS: ServerDefaults = ServerDefaults {
        port: 5432,
        user: Some("admin"),
    };

    #[test]
    fn shared_keys_and_own_keys_are_split_and_typos_refused() {
        let t: toml::Table = toml::from_str("host = \"db\"\nport = 1\nretries = 3").unwrap();
        let (server, own): (Server, Own) = parse_server("x", Some(&t), DEFAULTS).unwrap();
        assert_eq!((server.host.as_str(), server.port), ("db", 1));
        assert_eq!(server.user.as_deref(), Some("admin"));
        assert_eq!(own.retries, 3);
        for typo in ["hots = \"db\"", "retires = 3"] {
            let t: toml::Table = toml::from_str(typo).unwrap();
            let e = parse_server::<Own>("x", Some(&t), DEFAULTS).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{e}");
            assert_eq!(crate::error::exit_code(&e), 2);
        }
        let t: toml::Table = toml::from_str("host = \"u:pw@db\"").unwrap();
        let e = parse_server::<Own>("x", Some(&t), DEFAULTS).unwrap_err();
        assert!(e.to_string().contains("not a host name"), "{e}");
    }

    #[test]
    fn generated_sections_hold_only_what_differs_from_defaults() {
        let keys = ServerKeys {
            port: Some(55432),
            ..Default::default()
        };
        let own = Own {
            database: Some("postgres".into()),
            retries: 0,
        };
        let t = section_of(&[&keys, &own]);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t["port"].as_integer(), Some(55432));
        assert_eq!(t["database"].as_str(), Some("postgres"));
    }
}
