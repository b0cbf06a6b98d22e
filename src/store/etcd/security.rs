//! How rnet proves itself to etcd and checks etcd: TLS (a CA to check etcd's
//! certificate, a client certificate for `--client-cert-auth`) and etcd's own users.
//! Everything is checked before the first connection, so a wrong combination is
//! refused at start with the flag to fix.

use std::fmt;
use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::store::{StoreError, StoreResult};

/// The TLS files and user of a connection to etcd (all optional).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// PEM CA bundle that signed etcd's certificate (default: the system's roots).
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate (etcd's `--client-cert-auth`); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// etcd user and password (etcd's `auth enable`).
    pub user: Option<EtcdUser>,
}

/// An etcd user; its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
}

impl fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for EtcdSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSecurity")
            .field("ca_cert", &self.ca_cert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("user", &self.user)
            .finish()
    }
}

impl EtcdUser {
    /// The user of `--etcd-user NAME[:PASSWORD]`; without `:PASSWORD` the password is
    /// `password_env` (the value of `RNET_ETCD_PASSWORD`). Errors never quote a password.
    pub fn parse(flag: &str, password_env: Option<String>) -> StoreResult<EtcdUser> {
        let (name, password) = match flag.split_once(':') {
            Some((name, password)) => (name, Some(password.to_string())),
            None => (flag, password_env),
        };
        if name.is_empty() {
            return Err(bad(
                "--etcd-user names no user (expected USER or USER:PASSWORD)",
            ));
        }
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            return Err(bad(format!(
                "no password for etcd user {name:?}: set RNET_ETCD_PASSWORD or give --etcd-user {name}:PASSWORD"
            )));
        };
        Ok(EtcdUser {
            name: name.to_string(),
            password,
        })
    }
}

fn bad(why: impl fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd options: {why}"))
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificate,
    PrivateKey,
}

/// Read a PEM file, refusing one that is missing, unreadable or not the right kind.
fn read_pem(flag: &str, path: &Path, kind: Pem) -> StoreResult<Vec<u8>> {
    let data = std::fs::read(path).map_err(|e| bad(format!("{flag} {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&data);
    let (ok, want) = match kind {
        Pem::Certificate => (
            text.contains("-----BEGIN CERTIFICATE-----"),
            "a PEM certificate",
        ),
        Pem::PrivateKey => (
            text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----"),
            "a PEM private key",
        ),
    };
    if !ok {
        return Err(bad(format!("{flag} {}: not {want}", path.display())));
    }
    Ok(data)
}

impl EtcdSecurity {
    /// Whether any TLS file is given.
    pub fn has_tls_files(&self) -> bool {
        self.ca_cert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Check the options against the endpoints' scheme and read the files: the TLS
    /// options for `https` endpoints (None for plain ones).
    pub(super) fn tls_options(&self, https: bool) -> StoreResult<Option<TlsOptions>> {
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(bad("--etcd-cert needs --etcd-key (its private key)")),
            (None, Some(_)) => return Err(bad("--etcd-key needs --etcd-cert (its certificate)")),
            _ => {}
        }
        if !https {
            if self.has_tls_files() {
                return Err(bad(
                    "TLS files (--etcd-cacert/--etcd-cert/--etcd-key) are given but the store's endpoints are plain http: use https://HOST:PORT in --store",
                ));
            }
            return Ok(None);
        }
        let mut tls = match &self.ca_cert {
            Some(path) => TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem(
                "--etcd-cacert",
                path,
                Pem::Certificate,
            )?)),
            None => TlsOptions::new().with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let cert = read_pem("--etcd-cert", cert, Pem::Certificate)?;
            let key = read_pem("--etcd-key", key, Pem::PrivateKey)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(Some(tls))
    }

    /// Add TLS and the user to `options`.
    pub(super) fn apply(
        &self,
        mut options: ConnectOptions,
        tls: Option<TlsOptions>,
    ) -> ConnectOptions {
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        if let Some(user) = &self.user {
            // etcd's tokens expire (5 min idle by default): get a new one when refused.
            options = options
                .with_user(user.name.clone(), user.password.clone())
                .with_auto_token_refresh(true);
        }
        options
    }
}
