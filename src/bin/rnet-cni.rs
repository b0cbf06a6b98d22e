//! `rnet-cni`: the CNI plugin. Everything happens in `rnet::cni::main`; this only hands it the
//! process's environment and stdio and exits with its status.

use std::collections::HashMap;

fn main() {
    // vars_os: a runtime may pass a variable that is not UTF-8; std::env::vars would panic.
    let env: HashMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let status = rnet::cni::main(
        &env,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    );
    std::process::exit(status);
}
