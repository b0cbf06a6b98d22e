//! Pure: a Docker container's DNS names from the Docker engine's API. A remote network driver
//! is never told the container's name or its network aliases (CreateEndpoint and Join carry
//! ids, the sandbox key and port options), so rnetd asks the local engine after the Join:
//! `GET /networks/{id}` lists the containers of the network by endpoint id, and
//! `GET /containers/{id}/json` has the endpoint's aliases.

use serde_json::Value;

use crate::model::DnsName;

/// The container that holds endpoint `endpoint_id` in a `GET /networks/{id}` answer: its id
/// and its name (without Docker's leading '/').
pub fn container_of(network: &Value, endpoint_id: &str) -> Option<(String, String)> {
    let containers = network.get("Containers")?.as_object()?;
    containers.iter().find_map(|(id, c)| {
        (c.get("EndpointID")?.as_str()? == endpoint_id).then(|| {
            let name = c.get("Name").and_then(Value::as_str).unwrap_or_default();
            (id.clone(), name.trim_start_matches('/').to_string())
        })
    })
}

/// The aliases of endpoint `endpoint_id` in a `GET /containers/{id}/json` answer.
pub fn aliases_of(container: &Value, endpoint_id: &str) -> Vec<String> {
    let networks = container
        .pointer("/NetworkSettings/Networks")
        .and_then(Value::as_object);
    networks
        .into_iter()
        .flat_map(|n| n.values())
        .filter(|n| n.get("EndpointID").and_then(Value::as_str) == Some(endpoint_id))
        .flat_map(|n| {
            n.get("Aliases")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// The DNS names of a container from Docker's: its name, and its aliases (each only when DNS
/// can carry it, lowercased; repeats and the name itself left out; at most
/// [`DnsName::MAX_ALIASES`]).
pub fn dns_names(name: &str, aliases: &[String]) -> (Option<DnsName>, Vec<DnsName>) {
    let name = DnsName::lenient(name);
    let mut out: Vec<DnsName> = Vec::new();
    for a in aliases.iter().filter_map(|a| DnsName::lenient(a)) {
        if Some(&a) != name.as_ref() && !out.contains(&a) && out.len() < DnsName::MAX_ALIASES {
            out.push(a);
        }
    }
    (name, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_containers_name_and_aliases_are_found_by_endpoint_id() {
        let net = json!({"Name": "dnet", "Containers": {
            "c1": {"Name": "other", "EndpointID": "e1"},
            "c2": {"Name": "Web_App", "EndpointID": "e2"},
        }});
        assert_eq!(
            container_of(&net, "e2"),
            Some(("c2".into(), "Web_App".into()))
        );
        assert_eq!(container_of(&net, "e9"), None);
        assert_eq!(container_of(&json!({"Containers": null}), "e2"), None);
        let ctr = json!({"Name": "/web", "NetworkSettings": {"Networks": {
            "bridge": {"EndpointID": "x", "Aliases": ["no"]},
            "dnet": {"EndpointID": "e2", "Aliases": ["www", "WEB", "a1b2c3d4e5f6", "bad_alias", "www"]},
        }}});
        assert_eq!(
            aliases_of(&ctr, "e2"),
            ["www", "WEB", "a1b2c3d4e5f6", "bad_alias", "www"]
        );
        let (name, aliases) = dns_names("web", &aliases_of(&ctr, "e2"));
        assert_eq!(name.unwrap().as_str(), "web");
        let aliases: Vec<&str> = aliases.iter().map(DnsName::as_str).collect();
        assert_eq!(aliases, ["www", "a1b2c3d4e5f6"]);
        // A Docker name DNS cannot carry gives no name, not an error.
        assert_eq!(dns_names("Web_App", &[]).0, None);
    }
}
