//! rnet-cni: the CNI plugin, a thin client of rnetd.
//!
//! A runtime execs the plugin with `CNI_*` variables and the configuration on stdin; the
//! plugin turns them into one rnetd API call (`/v1/cni/...`) and prints the result (or a CNI
//! error) on stdout. Nothing here touches the kernel or the store: rnetd does all of it.
//! `main` takes the environment and stdio as arguments, so every path is table-testable.
//!
//! It starts fast: one current-thread tokio runtime for the one HTTP call, no etcd client
//! (nothing here reaches the daemon or store code, so the linker leaves them out).

mod commands;
mod request;
pub mod spec;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::api::ClientError;
use commands::{add, check, del, gc, status};
use request::parse_request;
use spec::{code, CniError, Version};

/// How long the plugin waits for rnetd before answering "try again later".
const CALL_TIMEOUT: Duration = Duration::from_secs(100);

/// Run the plugin: read the request from `env` and `stdin`, write the answer to `stdout`,
/// return the exit status. Never panics: a bug becomes a CNI error too.
pub fn main(env: &HashMap<String, String>, stdin: &mut dyn Read, stdout: &mut dyn Write) -> i32 {
    let mut input = Vec::new();
    let outcome = match stdin.read_to_end(&mut input) {
        Ok(_) => std::panic::catch_unwind(|| dispatch(env, &input)).unwrap_or_else(|_| {
            Err(CniError::new(
                code::PLUGIN_INTERNAL,
                "rnet-cni failed unexpectedly (see its stderr)",
            ))
        }),
        Err(e) => Err(CniError::new(code::IO, format!("reading stdin: {e}"))),
    };
    let (answer, status) = match outcome {
        Ok(None) => return 0,
        Ok(Some(v)) => (v, 0),
        Err(e) => (e.to_json(&error_version(&input)), 1),
    };
    let mut text = serde_json::to_vec(&answer).expect("JSON values serialize");
    text.push(b'\n');
    if stdout
        .write_all(&text)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return 1;
    }
    status
}

/// The version to put in an error: the configuration's if it can be read, else the current.
fn error_version(input: &[u8]) -> String {
    serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| Version::parse(v).is_some())
        .unwrap_or_else(|| spec::CURRENT_VERSION.to_string())
}

/// The CNI error for a failed API call.
fn api_error(e: ClientError) -> CniError {
    let c = match &e {
        ClientError::NotRunning { .. } | ClientError::Protocol { .. } => code::TRY_AGAIN_LATER,
        ClientError::Api { kind, .. } => match kind.as_str() {
            "unavailable" => code::TRY_AGAIN_LATER,
            "invalid" => code::RNETD_INVALID,
            "not_found" => code::NOT_FOUND,
            "conflict" => code::CONFLICT,
            "exhausted" => code::EXHAUSTED,
            _ => code::RNETD_INTERNAL,
        },
    };
    let details = match &e {
        ClientError::Api { status, kind, .. } => format!("rnetd answered {status} ({kind})"),
        ClientError::NotRunning { socket } | ClientError::Protocol { socket, .. } => {
            format!("socket {}", socket.display())
        }
    };
    CniError::new(c, e.to_string()).with_details(details)
}

fn dispatch(env: &HashMap<String, String>, input: &[u8]) -> Result<Option<Value>, CniError> {
    let command = env
        .get("CNI_COMMAND")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))?;
    if command == "VERSION" {
        let asked = serde_json::from_slice::<Value>(input).ok();
        let asked = asked.as_ref().and_then(|v| v.get("cniVersion")?.as_str());
        return Ok(Some(spec::version_result(asked)));
    }
    if !["ADD", "DEL", "CHECK", "STATUS", "GC"].contains(&command.as_str()) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {command:?}"),
        ));
    }
    let req = parse_request(env, input)?;
    match command.as_str() {
        "ADD" => add(&req).map(Some),
        "DEL" => del(&req).map(|()| None),
        "CHECK" => check(&req).map(|()| None),
        "STATUS" => status(&req).map(|()| None),
        _ => gc(&req).map(|()| None),
    }
}

#[cfg(test)]
mod tests;
