//! `mxqr demo --json`: every combination (who shows the QR code × generation × long-poll or
//! plain polling) signs a new device in on a throw-away server and is checked there.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

#[test]
fn demo_signs_in_every_combination() {
    let _heavy = mxqr_testkit::heavy_blocking();
    let out = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(["demo", "--json"])
        .env_remove("MXQR_CONFIG")
        .output()
        .expect("run mxqr demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let combinations: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "combination")
        .collect();
    let seen: BTreeSet<(String, String, String)> = combinations
        .iter()
        .map(|c| {
            assert_eq!(c["success"], true, "{c}");
            assert_eq!(c["cross_signed"], true, "{c}");
            assert_eq!(c["backup_enabled"], true, "{c}");
            assert_eq!(c["rounds"], 1, "{c}");
            let elapsed = c["elapsed_ms"].as_f64().expect("a timing");
            assert!(elapsed > 0.0 && elapsed < 60_000.0, "{c}");
            // Each step is logged with its time; the QR code and check code among them.
            let steps = c["steps"].as_array().expect("steps");
            let named = |name: &str| steps.iter().any(|s| s["step"] == name);
            assert!(
                named("qr") && named("check_code") && named("consent_page"),
                "{c}"
            );
            (
                c["polling"].as_str().unwrap().to_owned(),
                c["generation"].as_str().unwrap().to_owned(),
                c["qr_shown_by"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 8, "{stdout}");
    for polling in ["long-poll", "plain"] {
        for generation in ["msc4388", "msc4108-2024"] {
            for shows in ["new", "existing"] {
                assert!(
                    seen.contains(&(polling.into(), generation.into(), shows.into())),
                    "{polling} {generation} {shows} missing"
                );
            }
        }
    }
    let done = events.last().expect("events");
    assert_eq!(done["event"], "done", "{stdout}");
    assert_eq!(done["passed"], 8);
    assert_eq!(done["failed"], 0);
}

#[test]
fn demo_rejects_bad_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_mxqr"))
        .args(["demo", "--rounds", "0"])
        .output()
        .expect("run mxqr demo");
    assert_eq!(out.status.code(), Some(2));
}
