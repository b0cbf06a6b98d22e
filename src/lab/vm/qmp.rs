//! A minimal QMP client (QEMU's JSON monitor): connect, leave capability negotiation, run one
//! command, return its `return` value. Events QEMU sends meanwhile are skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::lab::LabError;

/// How long QEMU gets to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Run QMP command `execute` with `arguments` on the monitor socket `sock`.
pub(super) fn command(sock: &Path, execute: &str, arguments: Value) -> Result<Value, LabError> {
    let fail = |e: String| LabError::Runtime(format!("QMP {execute} on {}: {e}", sock.display()));
    let stream = UnixStream::connect(sock).map_err(|e| fail(format!("connecting: {e}")))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| fail(e.to_string()))?;
    let mut w = stream.try_clone().map_err(|e| fail(e.to_string()))?;
    let mut r = BufReader::new(stream);
    read_until(&mut r, "QMP").map_err(fail)?;
    send(&mut w, &json!({"execute": "qmp_capabilities"})).map_err(fail)?;
    reply(&mut r).map_err(fail)?;
    send(&mut w, &json!({"execute": execute, "arguments": arguments})).map_err(fail)?;
    reply(&mut r).map_err(fail)
}

fn send(w: &mut UnixStream, v: &Value) -> Result<(), String> {
    let mut line = serde_json::to_vec(v).expect("json");
    line.push(b'\n');
    w.write_all(&line).map_err(|e| format!("sending: {e}"))
}

/// The next message that has `key`, skipping others (events).
fn read_until(r: &mut impl BufRead, key: &str) -> Result<Value, String> {
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => return Err("QEMU closed the monitor".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading: {e}")),
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        if v.get(key).is_some() || v.get("error").is_some() {
            return Ok(v);
        }
    }
}

/// The `return` of the next reply, or its error's description.
fn reply(r: &mut impl BufRead) -> Result<Value, String> {
    let v = read_until(r, "return")?;
    match v.get("return") {
        Some(ret) => Ok(ret.clone()),
        None => Err(v["error"]["desc"].as_str().unwrap_or("error").to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_skipped_and_errors_reported() {
        let text = "{\"event\":\"NIC_RX_FILTER_CHANGED\"}\n{\"return\":{}}\n\
                    {\"error\":{\"class\":\"GenericError\",\"desc\":\"Device 'x' not found\"}}\n";
        let mut r = BufReader::new(text.as_bytes());
        assert_eq!(reply(&mut r).unwrap(), json!({}));
        assert_eq!(reply(&mut r).unwrap_err(), "Device 'x' not found");
        assert!(reply(&mut r).unwrap_err().contains("closed"));
    }
}
