//! The offline commands: import, export (ndjson, csv, geojson), replay, verify on an intact
//! and on a damaged copy, tokens, help and exit codes.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::*;

const ACLED: [&str; 31] = [
    "event_id_cnty",
    "event_date",
    "year",
    "time_precision",
    "disorder_type",
    "event_type",
    "sub_event_type",
    "actor1",
    "assoc_actor_1",
    "inter1",
    "actor2",
    "assoc_actor_2",
    "inter2",
    "interaction",
    "civilian_targeting",
    "iso",
    "region",
    "country",
    "admin1",
    "admin2",
    "admin3",
    "location",
    "latitude",
    "longitude",
    "geo_precision",
    "source",
    "source_scale",
    "notes",
    "fatalities",
    "tags",
    "timestamp",
];

pub(crate) fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One extra incident with a location, so that GeoJSON has a feature.
fn located_incident_line() -> String {
    let line = json!({
        "incident_id": "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a99",
        "expected_version": 0,
        "events": [{
            "event_id": "a1c3e0b4-6f2d-4e8a-9b1c-000000009901",
            "type": "IncidentReported",
            "data": {
                "kind": "shelling", "occurred_at": "2026-01-03T06:15:00Z", "region": "UA-63",
                "locality": "Kupiansk, \"centre\"",
                "location": {"lat": 49.710751, "lon": 37.615662, "precision": "near"},
                "summary": "Shelling of the town centre, one killed",
                "source": {"name": "Wire, Inc.", "kind": "media"}
            }
        }, {
            "event_id": "a1c3e0b4-6f2d-4e8a-9b1c-000000009902",
            "type": "CasualtiesReported",
            "data": {"killed": 1, "killed_high": 2, "injured": 3,
                     "source": {"name": "Wire, Inc.", "kind": "media"}}
        }]
    });
    format!("{line}\n")
}

/// Splits one CSV record (RFC 4180 quoting) — enough for the test's own rows.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

#[test]
fn import_export_replay_verify() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let data_s = d(&data);

    // Import from a file: the SPEC import report on stdout.
    let out = cli_ok(&["import", d(&seed_path()), "--data-dir", data_s]);
    let report: Value = serde_json::from_str(&out).expect("import report JSON");
    assert_eq!(
        report,
        json!({"appended": 10, "duplicates": 0, "rejected": []})
    );

    // From stdin, with a duplicate line, a bad line and a new one: exit 4, report says which.
    let seed = String::from_utf8(seed_bytes()).unwrap();
    let first_line = seed.lines().next().unwrap();
    let invalid = json!({
        "incident_id": "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a01",
        "events": [{"event_id": "a1c3e0b4-6f2d-4e8a-9b1c-000000009801", "type": "CasualtiesReported",
                    "data": {"killed": -1, "source": {"name": "Wire"}}}]
    });
    let input = format!(
        "{first_line}\nnot json\n{invalid}\n{}",
        located_incident_line()
    );
    let out = cli_with_stdin(
        &["import", "-", "--data-dir", data_s],
        Some(input.as_bytes()),
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["appended"], 2, "{report}");
    assert_eq!(report["duplicates"], 2, "{report}");
    let rejected = report["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{report}");
    assert_eq!(rejected[0]["line"], 2);
    assert_eq!(rejected[0]["status"], 400);
    assert_eq!(rejected[1]["line"], 3);
    assert_eq!(rejected[1]["status"], 422);
    assert!(
        rejected[1]["detail"].as_str().unwrap().contains("killed"),
        "{report}"
    );

    // A missing file: exit 1, the store untouched.
    let out = cli(&["import", "/nonexistent/x.ndjson", "--data-dir", data_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.ndjson"));

    // Input without line breaks (a binary file, /dev/zero): refused once a line passes 64 MiB,
    // instead of being read into memory whole; the lines before it are recorded.
    let endless = dir.path().join("seed-then-an-endless-line.ndjson");
    let seed = std::fs::read(seed_path()).unwrap();
    let seed_lines = seed.iter().filter(|b| **b == b'\n').count();
    std::fs::write(&endless, &seed).unwrap();
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&endless)
        .unwrap();
    f.set_len(seed.len() as u64 + (65 << 20)).unwrap();
    drop(f);
    let fresh = dir.path().join("fresh");
    let out = cli(&["import", d(&endless), "--data-dir", d(&fresh)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!("line {} is longer than 64 MiB", seed_lines + 1);
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("(10 events appended before)"), "{err}");
    let log = cli_ok(&["export", "--data-dir", d(&fresh)]);
    assert_eq!(log.lines().count(), 10, "the lines before it are recorded");

    // Export ndjson: the log, recorded events in the SPEC shape.
    let out = cli_ok(&["export", "--data-dir", data_s]);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("ndjson line"))
        .collect();
    assert_eq!(events.len(), 12);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["global_position"], json!(i as u64 + 1));
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "global_position",
            "incident_id",
            "stream_version",
            "event_id",
            "type",
            "data",
            "recorded_at",
            "recorded_by",
            "hash",
        ] {
            assert!(keys.contains(&k), "missing {k} in {e}");
        }
    }
    assert_eq!(events[0]["recorded_by"], "cli-import");
    assert_eq!(
        events[0]["event_id"],
        "a1c3e0b4-6f2d-4e8a-9b1c-000000000101"
    );

    // CSV: ACLED's 31 columns in order, then ours; one row per active incident.
    let csv_path = dir.path().join("incidents.csv");
    cli_ok(&[
        "export",
        "--format",
        "csv",
        "--output",
        d(&csv_path),
        "--data-dir",
        data_s,
    ]);
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let rows = parse_csv(&text);
    assert_eq!(&rows[0][..31], &ACLED[..]);
    assert_eq!(rows[0][31], "incident_id");
    assert_eq!(rows.len(), 1 + 5, "{text}");
    assert!(rows.iter().all(|r| r.len() == rows[0].len()), "ragged CSV");
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    let kupiansk = rows
        .iter()
        .find(|r| r[col("incident_id")] == "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a99")
        .expect("row of the located incident");
    assert_eq!(kupiansk[col("event_date")], "2026-01-03");
    assert_eq!(kupiansk[col("year")], "2026");
    assert_eq!(kupiansk[col("event_type")], "Explosions/Remote violence");
    assert_eq!(
        kupiansk[col("sub_event_type")],
        "Shelling/artillery/missile attack"
    );
    assert_eq!(kupiansk[col("country")], "Ukraine");
    assert_eq!(kupiansk[col("admin1")], "Kharkivska oblast");
    assert_eq!(kupiansk[col("location")], "Kupiansk, \"centre\"");
    assert_eq!(kupiansk[col("latitude")], "49.7108");
    assert_eq!(kupiansk[col("longitude")], "37.6157");
    assert_eq!(kupiansk[col("geo_precision")], "2");
    assert_eq!(kupiansk[col("source")], "Wire, Inc.");
    assert_eq!(kupiansk[col("fatalities")], "1");
    assert_eq!(kupiansk[col("killed_high")], "2");
    let kharkiv = rows
        .iter()
        .find(|r| r[col("incident_id")] == "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a01")
        .unwrap();
    assert_eq!(kharkiv[col("time_precision")], "2", "week -> 2");
    assert_eq!(
        kharkiv[col("sub_event_type")],
        "Shelling/artillery/missile attack"
    );
    let kherson_drone = rows
        .iter()
        .find(|r| r[col("incident_id")] == "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a03")
        .unwrap();
    assert_eq!(kherson_drone[col("sub_event_type")], "Air/drone strike");
    assert_eq!(kherson_drone[col("claims_disputed")], "1");

    // GeoJSON: a FeatureCollection with the one located incident as a Point [lon, lat].
    let out = cli_ok(&["export", "--format", "geojson", "--data-dir", data_s]);
    let fc: Value = serde_json::from_str(&out).expect("GeoJSON parses");
    assert_eq!(fc["type"], "FeatureCollection");
    let features = fc["features"].as_array().unwrap();
    assert_eq!(features.len(), 1, "{fc}");
    let f = &features[0];
    assert_eq!(f["type"], "Feature");
    assert_eq!(f["geometry"]["type"], "Point");
    assert_eq!(f["geometry"]["coordinates"], json!([37.615662, 49.710751]));
    assert_eq!(f["properties"]["location_precision"], "near");
    assert_eq!(f["properties"]["time_precision"], "exact");
    assert_eq!(f["properties"]["killed_best"], 1);

    // Replay: all of it, a prefix by position, and as of a time before anything was recorded.
    let out = cli_ok(&["replay", "--json", "--data-dir", data_s]);
    let all: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(all["events"], 12, "{all}");
    assert_eq!(all["incidents"], 5, "{all}");
    assert_eq!(all["regions"], 3, "{all}");
    let out = cli_ok(&[
        "replay",
        "--json",
        "--at-position",
        "2",
        "--data-dir",
        data_s,
    ]);
    let two: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(two["events"], 2, "{two}");
    assert_ne!(two["digest"], all["digest"]);
    let out = cli_ok(&[
        "replay",
        "--json",
        "--as-of",
        "2000-01-01T00:00:00Z",
        "--data-dir",
        data_s,
    ]);
    let none: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(none["events"], 0, "{none}");
    let text = cli_ok(&["replay", "--data-dir", data_s]);
    assert!(
        text.contains(&format!("digest:      {}", all["digest"].as_str().unwrap())),
        "{text}"
    );

    // Verify: passes on the intact log...
    let ok = cli_ok(&["verify", "--data-dir", data_s]);
    assert!(ok.contains("events:    12"), "{ok}");
    // ... and fails, naming file and offset, on a copy with one byte flipped early in the log.
    let damaged = dir.path().join("damaged");
    copy_dir(&data, &damaged);
    let segment = flip_a_byte_early_in_the_log(&damaged);
    let out = cli(&["verify", "--data-dir", d(&damaged)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        stderr.contains(&segment),
        "must name the file {segment}: {stderr}"
    );
    assert!(stderr.contains("offset"), "must give the offset: {stderr}");
    // ... also when the flipped byte is in the last record (acknowledged, complete on disk:
    // damage, not a torn tail), and neither verify nor serve cuts it off.
    let last = dir.path().join("damaged-last");
    copy_dir(&data, &last);
    let (segment, before) = flip_a_byte_near_the_end(&last);
    let out = cli(&["verify", "--data-dir", d(&last)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(stderr.contains("offset"), "must give the offset: {stderr}");
    let out = cli(&["serve", "--data-dir", d(&last), "--listen", "127.0.0.1:0"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "serve must refuse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        before,
        "the damaged log was changed"
    );
    // The intact original still verifies.
    cli_ok(&["verify", "--data-dir", data_s]);
}

/// Flips one byte 30 bytes before the end of the last segment file (inside the last record);
/// returns the file and its damaged contents.
fn flip_a_byte_near_the_end(data_dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = segments(data_dir).pop().expect("a segment file");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 30;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// Flips one byte inside the first record of the first segment file; returns its file name.
fn flip_a_byte_early_in_the_log(data_dir: &Path) -> String {
    let segment = segments(data_dir)
        .into_iter()
        .next()
        .expect("a segment file (log/*.seg)");
    let mut bytes = std::fs::read(&segment).unwrap();
    // Past any file header, well before the last record (the log holds 12 events).
    let at = bytes.len() / 5;
    bytes[at] ^= 0x5a;
    std::fs::write(&segment, bytes).unwrap();
    segment.file_name().unwrap().to_string_lossy().into_owned()
}

/// The log's segment files, in log order (their names are their first positions, zero-padded).
fn segments(data_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = walk(data_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Records in the segment files: what the log holds on disk, whatever a server says. A
/// served segment goes on with reserved zeros, and no record's length is 0, so the first 0
/// ends a file's records.
fn records_on_disk(data_dir: &Path) -> usize {
    segments(data_dir).iter().map(|p| records_in(p)).sum()
}

fn records_in(segment: &Path) -> usize {
    record_starts(&std::fs::read(segment).unwrap()).0.len()
}

/// Where each record of a segment's bytes starts, and where the records end (the first
/// length of 0, a served segment's reserve, or the end of the bytes).
fn record_starts(bytes: &[u8]) -> (Vec<usize>, usize) {
    let mut starts = Vec::new();
    let mut at = 32; // after the segment header
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        starts.push(at);
        at += len + 12;
    }
    (starts, at)
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn tokens_help_and_usage_errors() {
    let dir = temp_dir();
    let data = d(dir.path());
    let secret = create_token(dir.path(), "desk", "reporter");
    // A duplicate name fails; a bad role is refused.
    let out = cli(&[
        "token",
        "create",
        "--data-dir",
        data,
        "--name",
        "desk",
        "--role",
        "reader",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let out = cli(&[
        "token",
        "create",
        "--data-dir",
        data,
        "--name",
        "x",
        "--role",
        "root",
    ]);
    // An invalid value is a usage error (2), like any the argument parser refuses.
    assert_eq!(out.status.code(), Some(2));
    let list = cli_ok(&["token", "list", "--json", "--data-dir", data]);
    let tokens: Vec<Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["name"], "desk");
    assert_eq!(tokens[0]["role"], "reporter");
    assert_eq!(tokens[0]["revoked_at"], Value::Null);
    assert!(!list.contains(&secret));
    cli_ok(&["token", "revoke", "--data-dir", data, "--name", "desk"]);
    let list = cli_ok(&["token", "list", "--json", "--data-dir", data]);
    let t: Value = serde_json::from_str(list.trim()).unwrap();
    assert!(t["revoked_at"].is_string(), "{t}");
    let out = cli(&["token", "revoke", "--data-dir", data, "--name", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    // Revoking again says so (and is no error).
    let again = cli_ok(&["token", "revoke", "--data-dir", data, "--name", "desk"]);
    assert!(
        again.starts_with("desk was already revoked (at "),
        "{again}"
    );
    // Revoking the last admin warns: only `token create` opens the admin API again (a first
    // start makes no admin while any token, revoked or not, exists), and `serve` says so.
    create_token(dir.path(), "boss", "admin");
    let out = cli(&["token", "revoke", "--data-dir", data, "--name", "boss"]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("boss was the last active admin token"),
        "{err}"
    );
    let (serve, _) = serve_keeping_stderr(&["--data-dir", data]);
    let err = stop_and_read_stderr(serve);
    assert!(err.contains("no admin token is active"), "{err}");

    // Help explains the flags; a bad flag is a usage error (2).
    let help = cli_ok(&["serve", "--help"]);
    for flag in [
        "--data-dir",
        "--listen",
        "--store",
        "--public-read",
        "--durability",
        "INCIDENTLOG_LISTEN",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}");
    }
    assert_eq!(cli(&["serve", "--no-such-flag"]).status.code(), Some(2));
    assert_eq!(
        cli(&["replay", "--as-of", "yesterday", "--data-dir", data])
            .status
            .code(),
        Some(2)
    );
}

/// Runs `incidentlog <args>` with only `env` among the `INCIDENTLOG_*` variables.
fn cli_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
    let mut cmd = command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run")
}

#[test]
fn flags_come_from_incidentlog_env_vars() {
    let dir = temp_dir();
    let data_dir = dir.path().as_os_str();
    create_token(dir.path(), "env-desk", "reader");
    // INCIDENTLOG_DATA_DIR stands in for --data-dir.
    let out = cli_with_env(
        &["token", "list", "--json"],
        &[("INCIDENTLOG_DATA_DIR", data_dir)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"env-desk\""), "{text}");
    // A bad value in the environment is a usage error, like a bad flag, and the error names
    // the variable it came from (not only the flag that reads it).
    let out = cli_with_env(
        &["token", "list"],
        &[("INCIDENTLOG_STORE", "mysql://nope".as_ref())],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INCIDENTLOG_STORE"), "{stderr}");
    let out = cli_with_env(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("INCIDENTLOG_RATE_LIMIT", "fast".as_ref())],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'fast'") && stderr.contains("INCIDENTLOG_RATE_LIMIT"),
        "{stderr}"
    );
    // The same value on the command line: the flag is named, no variable.
    let out = cli_with_env(
        &["serve", "--rate-limit", "fast"],
        &[("INCIDENTLOG_RATE_LIMIT", "10".as_ref())],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--rate-limit") && !stderr.contains("INCIDENTLOG_RATE_LIMIT"),
        "{stderr}"
    );
    // Flags in conflict name the variable that set one of them, the user's own errors too.
    let out = cli_with_env(
        &["replay", "--as-of", "2026-01-01T00:00:00Z"],
        &[
            ("INCIDENTLOG_DATA_DIR", data_dir),
            ("INCIDENTLOG_AT_POSITION", "5".as_ref()),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--at-position is set by the environment variable INCIDENTLOG_AT_POSITION"),
        "{stderr}"
    );
    let out = cli_with_env(
        &["export"],
        &[
            ("INCIDENTLOG_DATA_DIR", data_dir),
            ("INCIDENTLOG_REGION", "UA-63".as_ref()),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--region is set by the environment variable INCIDENTLOG_REGION"),
        "{stderr}"
    );
    // Switches take the usual spellings from the environment: 1/0, yes/no, on/off, true/false.
    for (value, json) in [("1", true), ("yes", true), ("0", false), ("off", false)] {
        let out = cli_with_env(
            &["token", "list"],
            &[
                ("INCIDENTLOG_DATA_DIR", data_dir),
                ("INCIDENTLOG_JSON", value.as_ref()),
            ],
        );
        assert!(
            out.status.success(),
            "INCIDENTLOG_JSON={value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text.trim_start().starts_with('{'),
            json,
            "INCIDENTLOG_JSON={value}: {text}"
        );
    }
}

/// An event the views cannot take (here one of a type this version does not know, written
/// straight to the store as a newer version or a bug might have) is skipped, with an error in
/// the log, by every rebuild of the views alike: `replay` and the CSV and GeoJSON exports all
/// go on with the rest of the log, and the exports hold every other incident.
#[test]
fn exports_and_replay_skip_an_event_the_views_cannot_take_alike() {
    use incidentlog_store::{
        AppendRequest, EventStore, ExpectedVersion, FileStore, NewEvent, OpenOptions,
    };
    let dir = temp_dir();
    let data = dir.path().join("data");
    let data_s = d(&data);
    cli_ok(&["import", d(&seed_path()), "--data-dir", data_s]);
    let before: Value =
        serde_json::from_str(&cli_ok(&["replay", "--json", "--data-dir", data_s])).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = FileStore::open(&OpenOptions::new(&data)).await.unwrap();
        let data = serde_json::value::RawValue::from_string(r#"{"kind":"orbital"}"#.into());
        store
            .append(AppendRequest {
                stream_id: uuid::Uuid::new_v4(),
                expected_version: ExpectedVersion::Exact(0),
                events: vec![NewEvent {
                    event_id: uuid::Uuid::new_v4(),
                    event_type: "IncidentFromTheFuture".into(),
                    data: data.unwrap(),
                }],
                recorded_by: "a newer version".into(),
            })
            .await
            .unwrap();
        store.close().await.unwrap();
    });
    let out = cli_with_stdin(
        &["import", "-", "--data-dir", data_s],
        Some(located_incident_line().as_bytes()),
    );
    assert!(out.status.success(), "{out:?}");

    let after: Value =
        serde_json::from_str(&cli_ok(&["replay", "--json", "--data-dir", data_s])).unwrap();
    assert_eq!(
        after["at_position"],
        before["at_position"].as_u64().unwrap() + 3
    );
    assert_eq!(
        after["incidents"],
        before["incidents"].as_u64().unwrap() + 1
    );

    let out = cli(&[
        "export",
        "--format",
        "csv",
        "--include-retracted",
        "--data-dir",
        data_s,
    ]);
    assert!(out.status.success(), "{out:?}");
    let skipped = format!("position={}", before["at_position"].as_u64().unwrap() + 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("event skipped by the views") && stderr.contains(&skipped),
        "the skip is reported: {stderr}"
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows = parse_csv(&csv);
    let incident_id = rows[0].iter().position(|c| c == "incident_id").unwrap();
    let ids: Vec<&str> = rows[1..].iter().map(|r| r[incident_id].as_str()).collect();
    assert_eq!(
        ids.len() as u64,
        after["incidents"].as_u64().unwrap(),
        "{csv}"
    );
    assert_eq!(
        ids.last(),
        Some(&"5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a99"),
        "the incident after the skipped event is exported, in log order"
    );
    // Such a log is not restored (this version did not write it; its incident would refuse
    // every later append), and nothing is created.
    let exported = dir.path().join("log.ndjson");
    cli_ok(&["export", "--data-dir", data_s, "-o", d(&exported)]);
    let target = dir.path().join("restored");
    let out = cli(&["restore", d(&exported), "--data-dir", d(&target)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "position {}",
            before["at_position"].as_u64().unwrap() + 1
        )),
        "{stderr}"
    );
    assert!(!target.exists());
    let geojson: Value = serde_json::from_str(&cli_ok(&[
        "export",
        "--format",
        "geojson",
        "--data-dir",
        data_s,
    ]))
    .unwrap();
    let features = geojson["features"].as_array().unwrap();
    assert!(
        features
            .iter()
            .any(|f| f["properties"]["incident_id"] == "5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a99"),
        "{geojson}"
    );
}

/// Edits the record at `start` of a segment's `bytes` as someone who knows the format would:
/// the first letter of its `recorded_by` value upper-cased ("cli-import" becomes
/// "Cli-import"), its checksum recomputed (the chain hash not). Returns the record's covered
/// length and the letter as it was.
pub(crate) fn edit_recorded_by(bytes: &mut [u8], start: usize) -> (usize, u8) {
    let len = u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) as usize;
    let key = b"\"recorded_by\":\"";
    let letter = (start + 8 + 96..start + 8 + len - key.len())
        .find(|&i| &bytes[i..i + key.len()] == key)
        .expect("recorded_by in the body")
        + key.len();
    let was = bytes[letter];
    bytes[letter] = was.to_ascii_uppercase();
    let crc = crc32c::crc32c(&bytes[start + 8..start + 8 + len])
        .rotate_right(15)
        .wrapping_add(0xa282_ead8);
    bytes[start + 8 + len..start + 12 + len].copy_from_slice(&crc.to_le_bytes());
    (len, was)
}

/// The records of the last segment file: (file, its bytes, start offset of each record).
pub(crate) fn last_segment_records(data_dir: &Path) -> (std::path::PathBuf, Vec<u8>, Vec<usize>) {
    let path = segments(data_dir).pop().expect("a segment file");
    let bytes = std::fs::read(&path).unwrap();
    let (starts, end) = record_starts(&bytes);
    assert_eq!(end, bytes.len(), "records end where the file ends");
    (path, bytes, starts)
}

/// Someone who edits the log on purpose can recompute the checksums (and, from the edited
/// record on, the chain), so the chain alone cannot show such an edit in the last records.
/// The synced mark (`log/SYNCED`, the last synced position and its hash) shows it, unless the
/// editor removes or rewrites the mark too. A chain hash published earlier shows it anyway:
/// `verify --expect-hash POSITION:HASH` fails (exit 3) when the history up to POSITION changed
/// or was cut off, and passes on the intact log.
#[test]
fn verify_with_a_published_hash_catches_a_deliberate_edit_of_the_last_record() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let data_s = d(&data);
    cli_ok(&["import", d(&seed_path()), "--data-dir", data_s]);
    let out = cli_ok(&["verify", "--data-dir", data_s]);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let (events, head) = (field("events:"), field("head_hash:"));
    let pinned = format!("{events}:{head}");
    cli_ok(&["verify", "--data-dir", data_s, "--expect-hash", &pinned]);

    // Edit one letter of the last record's JSON body and recompute its checksum.
    let (segment, mut bytes, starts) = last_segment_records(&data);
    let (_, was) = edit_recorded_by(&mut bytes, *starts.last().unwrap());
    assert!(was.is_ascii_lowercase());
    std::fs::write(&segment, &bytes).unwrap();

    let marked = cli(&["verify", "--data-dir", data_s]);
    assert_eq!(marked.status.code(), Some(3), "{marked:?}");
    assert!(
        String::from_utf8_lossy(&marked.stderr).contains("the history was changed"),
        "{marked:?}"
    );
    // An editor who knows of the mark removes it: then the chain alone cannot show the edit.
    std::fs::remove_file(data.join("log").join("SYNCED")).unwrap();
    let plain = cli(&["verify", "--data-dir", data_s]);
    assert!(
        plain.status.success(),
        "the chain alone cannot show this edit (if it now can, update this test): {plain:?}"
    );
    let pinned_out = cli(&["verify", "--data-dir", data_s, "--expect-hash", &pinned]);
    assert_eq!(pinned_out.status.code(), Some(3), "{pinned_out:?}");
    // The same from the environment (a comma-separated list).
    let both = format!("{pinned},{pinned}");
    let from_env = cli_with_env(
        &["verify", "--data-dir", data_s],
        &[("INCIDENTLOG_EXPECT_HASH", both.as_ref())],
    );
    assert_eq!(from_env.status.code(), Some(3), "{from_env:?}");
    let stderr = String::from_utf8_lossy(&pinned_out.stderr);
    assert!(
        stderr.contains(&format!("chain hash at position {events}")),
        "{stderr}"
    );

    // Cutting the last append off (whole: a part of one is a torn tail, which verify reports
    // anyway) leaves a valid, shorter chain; the pinned hash sees it.
    let append_index = |at: usize| u32::from_le_bytes(bytes[at + 96..at + 100].try_into().unwrap());
    let last_append = *starts
        .iter()
        .rev()
        .find(|&&at| append_index(at) == 0)
        .unwrap();
    std::fs::write(&segment, &bytes[..last_append]).unwrap();
    cli_ok(&["verify", "--data-dir", data_s]);
    let cut = cli(&["verify", "--data-dir", data_s, "--expect-hash", &pinned]);
    assert_eq!(cut.status.code(), Some(3), "{cut:?}");
    assert!(
        String::from_utf8_lossy(&cut.stderr).contains("history was cut off"),
        "{cut:?}"
    );
    // A hash pinned before the edited records still holds.
    let log = cli_ok(&["export", "--data-dir", data_s]);
    let earlier: Value = serde_json::from_str(log.lines().nth(1).unwrap()).unwrap();
    let earlier_pin = format!(
        "{}:{}",
        earlier["global_position"],
        earlier["hash"].as_str().unwrap()
    );
    cli_ok(&[
        "verify",
        "--data-dir",
        data_s,
        "--expect-hash",
        &earlier_pin,
    ]);
}

/// Seed lines and how many events each carries.
fn seed_lines() -> Vec<(String, u64)> {
    String::from_utf8(seed_bytes())
        .unwrap()
        .lines()
        .map(|l| {
            let n = serde_json::from_str::<Value>(l).unwrap()["events"]
                .as_array()
                .unwrap()
                .len() as u64;
            (l.to_string(), n)
        })
        .collect()
}

/// `incidentlog import -` with its stdin held open by the test.
fn piped_import(data: &Path) -> (std::process::Child, std::process::ChildStdin) {
    use std::process::Stdio;
    let mut child = command()
        .args(["import", "-", "--data-dir", d(data)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn import");
    let pipe = child.stdin.take().expect("stdin");
    (child, pipe)
}

/// Lets a piped import run for `settle` with its input still open, then kills it (as a crash
/// would).
fn kill_after(
    settle: std::time::Duration,
    mut child: std::process::Child,
    pipe: std::process::ChildStdin,
) {
    std::thread::sleep(settle);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(pipe);
}

fn events_in_log(data: &Path) -> u64 {
    let out = cli_ok(&["replay", "--json", "--data-dir", d(data)]);
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    report["events"].as_u64().unwrap()
}

/// `import -` fed through a pipe records what it has read within a moment, without waiting
/// for the end of the input: when the producer pauses after a line, in the middle of one, or
/// keeps trickling lines; an incomplete line is kept whole for later, and a last line without
/// a newline still counts.
#[test]
fn import_from_a_pipe_records_lines_promptly_and_whole() {
    use std::io::Write as _;
    use std::time::Duration;
    let lines = seed_lines();
    let settle = Duration::from_millis(3_000);

    // A pause after a whole line: the line is recorded before the input ends (the importer
    // is then killed, as a crash would).
    let dir = temp_dir();
    let data = dir.path().join("a");
    let (child, mut pipe) = piped_import(&data);
    writeln!(pipe, "{}", lines[0].0).unwrap();
    kill_after(settle, child, pipe);
    assert_eq!(events_in_log(&data), lines[0].1);

    // A pause in the middle of a line: the whole lines before it are recorded.
    let data = dir.path().join("b");
    let (child, mut pipe) = piped_import(&data);
    let (head, _) = lines[1].0.split_at(lines[1].0.len() / 2);
    write!(pipe, "{}\n{head}", lines[0].0).unwrap();
    pipe.flush().unwrap();
    kill_after(settle, child, pipe);
    assert_eq!(events_in_log(&data), lines[0].1);

    // Pauses mid-line and before the end, then a last line without a newline: every line
    // arrives whole and is recorded, and the import succeeds.
    let data = dir.path().join("c");
    let (mut child, mut pipe) = piped_import(&data);
    let (head, tail) = lines[1].0.split_at(lines[1].0.len() / 2);
    write!(pipe, "{}\n{head}", lines[0].0).unwrap();
    pipe.flush().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    write!(pipe, "{tail}\n{}", lines[2].0).unwrap();
    pipe.flush().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    drop(pipe);
    assert!(child.wait().unwrap().success());
    assert_eq!(events_in_log(&data), lines[0].1 + lines[1].1 + lines[2].1);

    // A steady trickle (a line every 40 ms, never a 100 ms pause): written as it comes.
    let data = dir.path().join("d");
    let (child, mut pipe) = piped_import(&data);
    for (line, _) in &lines {
        writeln!(pipe, "{line}").unwrap();
        pipe.flush().unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    kill_after(settle, child, pipe);
    assert_eq!(
        events_in_log(&data),
        lines.iter().map(|(_, n)| n).sum::<u64>()
    );
}

/// The command line's smaller promises: names, values and paths are checked before anything
/// is created, secrets stay out of error messages, and each failure has its exit code.
#[test]
fn usage_errors_are_caught_before_anything_is_touched() {
    let dir = temp_dir();
    let missing = dir.path().join("typo");
    // Names stored as `recorded_by`: the token-name rules, a usage error (2) otherwise.
    for args in [
        vec!["token", "create", "--name", "bad name", "--role", "reader"],
        vec!["import", "-", "--recorded-by", ""],
    ] {
        let mut all = args.clone();
        all.extend(["--data-dir", d(&missing)]);
        let out = cli(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}");
    }
    // `token list` and `token revoke` need an existing store and create none.
    for args in [
        vec!["token", "list"],
        vec!["token", "revoke", "--name", "desk"],
    ] {
        let mut all = args.clone();
        all.extend(["--data-dir", d(&missing)]);
        let out = cli(&all);
        assert_eq!(out.status.code(), Some(1), "{all:?}");
        assert!(!missing.exists(), "{all:?} created {}", missing.display());
    }
    // Importing a directory fails before the store is created.
    let out = cli(&["import", d(dir.path()), "--data-dir", d(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));
    assert!(!missing.exists());
    // A mistyped store URL is refused without repeating its password.
    let out = cli(&[
        "token",
        "list",
        "--store",
        "postgress://u:hunter2secret@localhost/db",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("hunter2secret"), "{err}");
    assert!(err.contains("\"postgress\""), "{err}");
    // Limits and durations must make sense; a log filter must parse.
    // (A limit beyond what a semaphore holds once panicked after the first token was made.)
    for args in [
        vec!["serve", "--max-connections", "0"],
        vec!["serve", "--cors-origin", "https://dash.example.org/"],
        vec!["serve", "--cors-origin", "dash.example.org"],
        vec!["serve", "--send-timeout", "0s"],
        vec!["serve", "--max-concurrent-requests", "2305843009213693952"],
        vec!["serve", "--max-sse-clients", "18446744073709551615"],
        vec!["serve", "--max-concurrent-per-client", "0"],
        vec!["serve", "--request-timeout", "0s"],
        vec!["serve", "--sse-heartbeat", "0"],
        vec!["replay", "--log", "bogus[["],
    ] {
        let mut all = args.clone();
        all.extend(["--data-dir", d(&missing)]);
        assert_eq!(cli(&all).status.code(), Some(2), "{all:?}");
        assert!(!missing.exists(), "{all:?} created {}", missing.display());
    }
    // --data-dir naming a file: said plainly, exit 1.
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    let out = cli(&["verify", "--data-dir", d(&file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));

    // A damaged token file is not a damaged log: exit 1, naming the file.
    let data = dir.path().join("data");
    create_token(&data, "desk", "reader");
    std::fs::write(data.join("tokens.json"), b"[{\"name\": \n").unwrap();
    let out = cli(&["token", "list", "--data-dir", d(&data)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokens.json is not a valid token file"),
        "{err}"
    );
    assert!(!err.contains("corrupt log"), "{err}");

    // A replay past the end replays the whole log and says so.
    let out = cli(&["replay", "--at-position", "1000", "--data-dir", d(&data)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the log ends at position 0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Multi-valued CSV cells escape their separator: names with `;` or `\` come back intact.
#[test]
fn csv_source_names_keep_their_semicolons() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let line = json!({
        "incident_id": new_id(),
        "events": [
            {"event_id": new_id(), "type": "IncidentReported", "data": {
                "kind": "shelling", "occurred_at": "2026-01-03", "region": "UA-63",
                "source": {"name": "B;semi"}}},
            {"event_id": new_id(), "type": "SourceAdded", "data": {"source": {"name": "back\\slash"}}},
            {"event_id": new_id(), "type": "SourceAdded", "data": {"source": {"name": "Plain"}}}
        ]
    });
    let out = cli_with_stdin(
        &["import", "-", "--data-dir", d(&data)],
        Some(format!("{line}\n").as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0));
    let csv = cli_ok(&["export", "--format", "csv", "--data-dir", d(&data)]);
    let rows = parse_csv(&csv);
    let col = rows[0].iter().position(|h| h == "source").unwrap();
    assert_eq!(rows[1][col], "B\\;semi;back\\\\slash;Plain");
    // Splitting on unescaped `;` and unescaping gives the names back.
    let mut names = Vec::new();
    let mut cur = String::new();
    let mut chars = rows[1][col].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next().unwrap()),
            ';' => names.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    names.push(cur);
    assert_eq!(names, ["B;semi", "back\\slash", "Plain"]);
}

/// A record edited with its checksum recomputed (but not the chain after it): the integrity
/// check after start finds it; `/readyz` says `damaged` and appends are refused (503), while
/// reads go on; `verify` names the file and offset.
#[test]
fn a_server_finds_an_edited_record_after_start_and_refuses_appends() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    cli_ok(&["import", d(&seed_path()), "--data-dir", d(&data)]);
    let token = create_token(&data, "desk", "admin");
    // One letter of the first record's `recorded_by`, with its checksum recomputed.
    let (segment, mut bytes, starts) = last_segment_records(&data);
    edit_recorded_by(&mut bytes, starts[0]);
    std::fs::write(&segment, &bytes).unwrap();
    let out = cli(&["verify", "--data-dir", d(&data)]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("hash chain broken"));

    let srv = Server::start_unready(&data, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = srv.get("/readyz", &token);
        if r.status == 503 && r.json()["status"] == "damaged" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = records_on_disk(&data);
    let r = srv.append(
        &token,
        &new_id(),
        &batch(json!(0), vec![reported("shelling", "UA-63", "2026-01-10")]),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("integrity check"), "{}", r.text());
    let r = srv.get("/v1/events?limit=1", &token);
    r.expect(200);
    // The refused append left nothing in the log.
    let mut srv = srv;
    srv.terminate();
    assert_eq!(records_on_disk(&data), before);
}

/// Damage done under a running server: a record edited in place is found by the next
/// `GET /v1/admin/verify`, which then counts like the check after start (`damaged`, appends
/// refused); the active segment deleted makes the next append a 503 (it would have been
/// acknowledged into a file the next start does not have), the server `unavailable`, and its
/// shutdown exit 1.
#[test]
fn damage_under_a_running_server_stops_its_appends() {
    use std::os::unix::fs::FileExt;
    let dir = temp_dir();
    let data = dir.path().join("data");
    cli_ok(&["import", d(&seed_path()), "--data-dir", d(&data)]);
    let token = create_token(&data, "desk", "admin");
    let srv = Server::start(&data, &[]);
    let append = |srv: &Server, token: &str| {
        srv.append(
            token,
            &new_id(),
            &batch(json!(0), vec![reported("shelling", "UA-63", "2026-01-10")]),
        )
    };
    append(&srv, &token).expect(201);
    // The first record (after the segment's 32-byte header; a running server's segment goes
    // on with reserved zeros after its records).
    let segment = segments(&data).pop().expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    let first = 32;
    let (len, _) = edit_recorded_by(&mut bytes, first);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    f.write_all_at(&bytes[first..first + 12 + len], first as u64)
        .unwrap();
    let r = srv.get("/v1/admin/verify", &token);
    assert_eq!(r.json()["ok"], json!(false), "{}", r.text());
    let r = srv.get("/readyz", &token);
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (503, json!("damaged"))
    );
    let before = records_on_disk(&data);
    let r = append(&srv, &token);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("integrity check"), "{}", r.text());
    // Nor is its stop a clean one: the log is damaged (exit 3).
    let mut srv = srv;
    assert_eq!(srv.terminate().code(), Some(3));
    assert_eq!(
        records_on_disk(&data),
        before,
        "the refused append was written"
    );

    let dir = temp_dir();
    let data = dir.path().join("data");
    cli_ok(&["import", d(&seed_path()), "--data-dir", d(&data)]);
    let token = create_token(&data, "desk", "admin");
    let mut srv = Server::start(&data, &[]);
    append(&srv, &token).expect(201);
    let active = segments(&data).pop().expect("a segment file");
    let kept = records_on_disk(&data) - records_in(&active);
    std::fs::remove_file(active).unwrap();
    // (The store looks at its file at most every 10 ms.)
    std::thread::sleep(std::time::Duration::from_millis(50));
    for _ in 0..2 {
        let r = append(&srv, &token);
        assert_eq!(r.status, 503, "{}", r.text());
    }
    let r = srv.get("/readyz", &token);
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (503, json!("unavailable"))
    );
    // No clean stop, however orderly the shutdown; and the refused appends went nowhere
    // (no new segment holds them).
    assert_eq!(srv.terminate().code(), Some(1));
    assert_eq!(records_on_disk(&data), kept, "a refused append was written");
}

/// A segment deleted under a server that takes no appends is noticed all the same (the idle
/// store looks once a second): `/readyz` says `unavailable` and the shutdown exits 1, instead
/// of "stopped cleanly" with the acknowledged events gone at the next start.
#[test]
fn a_segment_deleted_under_an_idle_server_is_noticed() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    cli_ok(&["import", d(&seed_path()), "--data-dir", d(&data)]);
    let token = create_token(&data, "desk", "admin");
    let mut srv = Server::start(&data, &[]);
    for segment in segments(&data) {
        std::fs::remove_file(segment).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = srv.get("/readyz", &token);
        if r.status == 503 {
            assert_eq!(r.json()["status"], json!("unavailable"), "{}", r.text());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.text());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(srv.terminate().code(), Some(1));
}

/// `incidentlog restore` rebuilds an exported log byte for byte (the same export, the same
/// digest), goes on after an interrupted restore, and writes nothing from a file that is not
/// one whole, intact log.
#[test]
fn restore_rebuilds_an_exported_log_exactly() {
    let dir = temp_dir();
    let original = dir.path().join("original");
    cli_ok(&["import", d(&seed_path()), "--data-dir", d(&original)]);
    let extra = format!("{}\n", located_incident_line());
    cli_with_stdin(
        &["import", "-", "--data-dir", d(&original)],
        Some(extra.as_bytes()),
    );
    let export = dir.path().join("log.ndjson");
    cli_ok(&["export", "--data-dir", d(&original), "-o", d(&export)]);
    let exported = std::fs::read_to_string(&export).unwrap();
    let lines: Vec<&str> = exported.lines().collect();
    assert_eq!(lines.len(), 12);
    let head_hash = |verify: &str| -> String {
        verify
            .lines()
            .find_map(|l| l.strip_prefix("head_hash:"))
            .map(|h| h.trim().to_string())
            .expect("a head hash")
    };
    let original_hash = head_hash(&cli_ok(&["verify", "--data-dir", d(&original)]));
    let digest = |data: &Path| -> Value {
        let out = cli_ok(&["replay", "--json", "--data-dir", d(data)]);
        serde_json::from_str::<Value>(&out).unwrap()["digest"].clone()
    };

    // `import` of an export refuses every line, and points to `restore`.
    let out = cli(&[
        "import",
        d(&export),
        "--data-dir",
        d(&dir.path().join("imported")),
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`incidentlog restore FILE`"), "{stderr}");

    let restored = dir.path().join("restored");
    let out = cli_ok(&["restore", d(&export), "--data-dir", d(&restored)]);
    assert!(out.contains("restored:  12 events"), "{out}");
    assert_eq!(head_hash(&out), original_hash);
    assert_eq!(
        head_hash(&cli_ok(&["verify", "--data-dir", d(&restored)])),
        original_hash
    );
    assert_eq!(cli_ok(&["export", "--data-dir", d(&restored)]), exported);
    assert_eq!(digest(&restored), digest(&original));
    // Again: everything is there already.
    let out = cli_ok(&["restore", d(&export), "--data-dir", d(&restored)]);
    assert!(
        out.contains("restored:  0 events (12 were already"),
        "{out}"
    );

    // Interrupted after the first append (the first seed line's 3 events): goes on.
    let first_append = lines
        .iter()
        .take_while(|l| l.contains("5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a01"))
        .count();
    assert!(
        first_append >= 2,
        "the seed's first line has several events"
    );
    let part = dir.path().join("part.ndjson");
    std::fs::write(&part, lines[..first_append].join("\n") + "\n").unwrap();
    let resumed = dir.path().join("resumed");
    cli_ok(&["restore", d(&part), "--data-dir", d(&resumed)]);
    let out = cli_ok(&["restore", d(&export), "--data-dir", d(&resumed)]);
    assert!(
        out.contains(&format!("({first_append} were already in the store)")),
        "{out}"
    );
    assert_eq!(cli_ok(&["export", "--data-dir", d(&resumed)]), exported);

    // Refused, with nothing created: a changed event, a file cut inside an append, a gap.
    let refused = |name: &str, text: String, why: &str| {
        let file = dir.path().join(format!("{name}.ndjson"));
        std::fs::write(&file, text).unwrap();
        let target = dir.path().join(name);
        let out = cli(&["restore", d(&file), "--data-dir", d(&target)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(why), "{name}: {stderr}");
        assert!(!target.exists(), "{name}: nothing may be created");
    };
    let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    changed[5] = changed[5].replacen("\"data\":{", "\"data\":{\"added\":1,", 1);
    assert_ne!(changed[5], lines[5]);
    refused(
        "changed",
        changed.join("\n"),
        "the hash of the event at position 6",
    );
    refused("cut", lines[..first_append - 1].join("\n"), "cut off");
    let gap: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .map(|(_, l)| *l)
        .collect();
    refused(
        "gap",
        gap.join("\n"),
        "position 6 where position 5 was expected",
    );
    refused("garbage", "{\"not\": \"an event\"}\n".into(), "line 1");
    refused("empty", String::new(), "no events");
    refused("blank", "\n\n".into(), "no events");
    // The log keeps microseconds: a finer time was not written by an export (and the hash,
    // which covers microseconds, would not see the edit).
    let recorded_at = |l: &str| -> String {
        serde_json::from_str::<Value>(l).unwrap()["recorded_at"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut finer: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let t = recorded_at(lines[11]);
    finer[11] = lines[11].replace(&t, &t.replace('Z', "999Z"));
    refused("finer", finer.join("\n"), "below the microsecond");
    // Not a regular file: refused before reading (a FIFO would block, then be read once).
    let fifo = dir.path().join("fifo.ndjson");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let target = dir.path().join("from-fifo");
        let out = cli(&["restore", d(&fifo), "--data-dir", d(&target)]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not a regular file"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!target.exists());
    }

    // A file cut at an append boundary is a shorter log that looks whole: a published hash
    // (the ndjson stream's Incidentlog-Last-Event header, or verify's head) tells.
    let pin = format!("12:{original_hash}");
    let target = dir.path().join("pinned");
    let out = cli(&[
        "restore",
        d(&part),
        "--expect-hash",
        &pin,
        "--data-dir",
        d(&target),
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut off"));
    assert!(!target.exists());
    let wrong = format!("12:{}", "0".repeat(64));
    let out = cli(&[
        "restore",
        d(&export),
        "--expect-hash",
        &wrong,
        "--data-dir",
        d(&target),
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(!target.exists());
    cli_ok(&[
        "restore",
        d(&export),
        "--expect-hash",
        &pin,
        "--data-dir",
        d(&target),
    ]);

    // A store holding another log is refused and left as it was.
    let other = dir.path().join("other");
    cli_ok(&["import", d(&seed_path()), "--data-dir", d(&other)]);
    let before = cli_ok(&["export", "--data-dir", d(&other)]);
    let out = cli(&["restore", d(&export), "--data-dir", d(&other)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("different log"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cli_ok(&["export", "--data-dir", d(&other)]), before);
}

/// An online backup: `GET /v1/events` as ndjson from a running server, extended later with
/// `?after=N`, restores (offline, elsewhere) to the very log the server holds.
#[test]
fn a_backup_streamed_from_a_running_server_restores_to_the_same_log() {
    let (dir, mut server, tokens) = server_with_tokens(&[]);
    import_seed(&server, &tokens.reporter);
    let backup = |after: u64| -> (Vec<u8>, String) {
        let r = server
            .req("GET", &format!("/v1/events?after={after}"))
            .token(&tokens.reader)
            .header("Accept", "application/x-ndjson")
            .send();
        r.expect(200);
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        let last = r
            .header("incidentlog-last-event")
            .expect("the last event's hash")
            .to_string();
        (r.body, last)
    };
    let (mut file, first_last) = backup(0);
    assert!(first_last.starts_with("10:"), "{first_last}");
    assert_eq!(file.iter().filter(|b| **b == b'\n').count(), 10);
    // More events after the first backup: the backup is extended from where it ended.
    let extra = format!("{}\n", located_incident_line());
    server
        .req("POST", "/v1/events")
        .token(&tokens.reporter)
        .body("application/x-ndjson", extra.into_bytes())
        .send()
        .expect(200);
    let (more, last) = backup(10);
    file.extend(more);
    assert!(last.starts_with("12:"), "{last}");
    let path = dir.path().join("backup.ndjson");
    std::fs::write(&path, &file).unwrap();
    server.terminate();

    let restored = dir.path().join("restored");
    let out = cli_ok(&[
        "restore",
        d(&path),
        "--expect-hash",
        &format!("{first_last},{last}"),
        "--data-dir",
        d(&restored),
    ]);
    assert!(out.contains("restored:  12 events"), "{out}");
    assert_eq!(
        cli_ok(&["export", "--data-dir", d(&restored)]).into_bytes(),
        file,
        "the restored log is the server's, line for line"
    );
    let original = cli_ok(&["verify", "--data-dir", d(dir.path())]);
    let copy = cli_ok(&["verify", "--data-dir", d(&restored)]);
    assert_eq!(original, copy);
}

/// `export` of the views takes the filters of `GET /v1/incidents` and, like `replay`, a point
/// in the past; the ndjson log takes the point in the past (and stops there), not the filters.
#[test]
fn exports_select_incidents_and_go_back_in_time() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let data_s = d(&data);
    cli_ok(&["import", d(&seed_path()), "--data-dir", data_s]);
    let seed_events = events_in_log(&data);
    let later = dir.path().join("later.ndjson");
    std::fs::write(&later, located_incident_line()).unwrap();
    cli_ok(&["import", d(&later), "--data-dir", data_s]);

    let csv = |extra: &[&str]| -> Vec<Vec<String>> {
        let mut args = vec!["export", "--format", "csv", "--data-dir", data_s];
        args.extend_from_slice(extra);
        parse_csv(&cli_ok(&args))
    };
    let all = csv(&[]);
    let col = |name: &str| all[0].iter().position(|c| c == name).unwrap();
    // The incident ids of the whole export's rows that `keep` selects, in export order.
    let ids_where = |keep: &dyn Fn(&Vec<String>) -> bool| -> Vec<String> {
        all[1..]
            .iter()
            .filter(|r| keep(r))
            .map(|r| r[col("incident_id")].clone())
            .collect()
    };
    let ids = |rows: &[Vec<String>]| -> Vec<String> {
        assert_eq!(rows[0], all[0], "the same header");
        rows[1..]
            .iter()
            .map(|r| r[col("incident_id")].clone())
            .collect()
    };
    assert_eq!(all.len(), 1 + 5);

    let kherson = ids(&csv(&["--region", "UA-65"]));
    assert_eq!(kherson.len(), 2);
    assert_eq!(kherson, ids_where(&|r| r[col("region_code")] == "UA-65"));
    let drones = ids(&csv(&["--kind", "drone_strike"]));
    assert_eq!(drones.len(), 2);
    assert_eq!(drones, ids_where(&|r| r[col("kind")] == "drone_strike"));
    let both = ids(&csv(&["--kind", "drone_strike", "--region", "UA-65"]));
    assert_eq!(
        both,
        vec!["5f0c7a52-3c1e-4d6b-9a51-0b7c2f9e1a03".to_string()]
    );
    let disputed = ids(&csv(&["--claim-status", "disputed"]));
    assert_eq!(disputed.len(), 2);
    assert_eq!(disputed, ids_where(&|r| r[col("claims_disputed")] != "0"));
    assert!(ids(&csv(&["--claim-status", "confirmed"])).is_empty());
    let on_the_2nd = ids(&csv(&["--from", "2026-01-02", "--to", "2026-01-02"]));
    assert_eq!(on_the_2nd.len(), 2);
    assert_eq!(
        on_the_2nd,
        ids_where(&|r| r[col("event_date")] == "2026-01-02")
    );
    let from_the_2nd = ids(&csv(&["--from", "2026-01-02T00:00:00Z"]));
    assert_eq!(
        from_the_2nd,
        ids_where(&|r| r[col("event_date")].as_str() >= "2026-01-02")
    );
    assert_eq!(from_the_2nd.len(), 3);

    let geo = |extra: &[&str]| -> usize {
        let mut args = vec!["export", "--format", "geojson", "--data-dir", data_s];
        args.extend_from_slice(extra);
        let fc: Value = serde_json::from_str(&cli_ok(&args)).expect("GeoJSON");
        fc["features"].as_array().unwrap().len()
    };
    assert_eq!(geo(&[]), 1);
    assert_eq!(geo(&["--region", "UA-63"]), 1);
    assert_eq!(geo(&["--region", "UA-65"]), 0);

    // Back in time: before the later import the located incident did not exist; --as-of the
    // seed's last recorded_at is the same cut as its position.
    let log: Vec<Value> = cli_ok(&["export", "--data-dir", data_s])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len() as u64, seed_events + 2);
    let cut = seed_events.to_string();
    let cut_at = log[seed_events as usize - 1]["recorded_at"]
        .as_str()
        .unwrap()
        .to_string();
    let before = csv(&["--at-position", &cut]);
    assert_eq!(
        ids(&before),
        ids_where(&|r| !r[col("incident_id")].ends_with("1a99"))
    );
    assert_eq!(before.len(), 1 + 4);
    assert_eq!(csv(&["--as-of", &cut_at]), before);
    assert_eq!(geo(&["--at-position", &cut]), 0);
    let prefix = cli_ok(&["export", "--data-dir", data_s, "--at-position", &cut]);
    let prefix: Vec<Value> = prefix
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(prefix[..], log[..seed_events as usize]);
    let prefix_as_of = cli_ok(&["export", "--data-dir", data_s, "--as-of", &cut_at]);
    assert_eq!(prefix_as_of.lines().count() as u64, seed_events);
    // A cut inside an append (the seed's first line is one append of two events) is written
    // as asked, with a note that `restore` will refuse it; a cut between appends has none.
    for (position, inside) in [("1", true), ("2", false), (cut.as_str(), false)] {
        let out = cli(&["export", "--data-dir", data_s, "--at-position", position]);
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains("is inside an append"),
            inside,
            "--at-position {position}: {stderr}"
        );
    }
    assert!(cli_ok(&[
        "export",
        "--data-dir",
        data_s,
        "--as-of",
        "2000-01-01T00:00:00Z"
    ])
    .is_empty());

    // Filters select views: with the ndjson log they are a usage error, as is an empty window.
    for bad in [
        &["export", "--data-dir", data_s, "--region", "UA-63"][..],
        &["export", "--data-dir", data_s, "--include-retracted"][..],
        &[
            "export",
            "--format",
            "csv",
            "--data-dir",
            data_s,
            "--from",
            "2026-01-03",
            "--to",
            "2026-01-02",
        ][..],
        &[
            "export",
            "--format",
            "csv",
            "--data-dir",
            data_s,
            "--from",
            "2026-02-30",
        ][..],
        &[
            "export",
            "--format",
            "csv",
            "--data-dir",
            data_s,
            "--kind",
            "nuke",
        ][..],
        &[
            "export",
            "--format",
            "csv",
            "--data-dir",
            data_s,
            "--as-of",
            "2026-01-01",
            "--at-position",
            "3",
        ][..],
    ] {
        let out = cli(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(out.stdout.is_empty(), "{bad:?}");
    }
}

/// A running server answers `GET /v1/incidents` as CSV or GeoJSON with exactly the bytes
/// `incidentlog export` writes once it is stopped, filters included: one writer for both.
#[test]
fn the_server_lists_incidents_as_the_export_writes_them() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let data_s = d(&data);
    cli_ok(&["import", d(&seed_path()), "--data-dir", data_s]);
    let later = dir.path().join("later.ndjson");
    std::fs::write(&later, located_incident_line()).unwrap();
    cli_ok(&["import", d(&later), "--data-dir", data_s]);
    let reader = create_token(&data, "newsroom", "reader");

    let mut srv = Server::start(&data, &[]);
    let cases: [(&str, &str, &[&str]); 4] = [
        ("/v1/incidents", "text/csv", &["--format", "csv"]),
        (
            "/v1/incidents?region=UA-65&kind=drone_strike",
            "text/csv",
            &[
                "--format",
                "csv",
                "--region",
                "UA-65",
                "--kind",
                "drone_strike",
            ],
        ),
        (
            "/v1/incidents?from=2026-01-02",
            "application/geo+json, application/json;q=0.5",
            &["--format", "geojson", "--from", "2026-01-02"],
        ),
        (
            "/v1/incidents?claim_status=disputed",
            "text/csv",
            &["--format", "csv", "--claim-status", "disputed"],
        ),
    ];
    let mut answers = Vec::new();
    for (path, accept, _) in &cases {
        let r = srv
            .req("GET", path)
            .token(&reader)
            .header("accept", accept)
            .send();
        r.expect(200);
        let media = if accept.starts_with("text/csv") {
            "text/csv; charset=utf-8"
        } else {
            "application/geo+json"
        };
        assert_eq!(r.header("content-type"), Some(media), "{path}");
        assert!(!r.body.is_empty());
        answers.push(r.body);
    }
    // JSON stays the default, and paging parameters do not mix with a table.
    let json = srv.get("/v1/incidents", &reader);
    json.expect(200);
    assert_eq!(json.json()["incidents"].as_array().unwrap().len(), 5);
    let bad = srv
        .req("GET", "/v1/incidents?limit=2")
        .token(&reader)
        .header("accept", "text/csv")
        .send()
        .expect_problem(400);
    assert_eq!(bad["errors"][0]["pointer"], "/limit");
    assert_eq!(srv.terminate().code(), Some(0));

    for ((path, _, flags), answer) in cases.iter().zip(&answers) {
        let mut args = vec!["export", "--data-dir", data_s];
        args.extend_from_slice(flags);
        let exported = cli(&args);
        assert!(exported.status.success());
        assert_eq!(
            String::from_utf8_lossy(answer),
            String::from_utf8_lossy(&exported.stdout),
            "{path}"
        );
    }
}

/// An export is a copy of the log's sources and witnesses: a file it creates is owner-only,
/// whatever the umask. And an export whose reader stops early is not a success.
#[test]
fn exports_are_owner_only_and_a_cut_off_export_fails() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Stdio;

    let dir = temp_dir();
    let data = dir.path().join("data");
    let data_s = d(&data);
    cli_ok(&["import", d(&seed_path()), "--data-dir", data_s]);
    for format in ["ndjson", "csv", "geojson"] {
        let file = dir.path().join(format!("export.{format}"));
        cli_ok(&[
            "export",
            "--format",
            format,
            "--data-dir",
            data_s,
            "-o",
            d(&file),
        ]);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{format}: {mode:o}");
        assert!(std::fs::metadata(&file).unwrap().len() > 0);
    }

    // The reader is gone before the first byte is written: the export cannot be complete.
    for format in ["ndjson", "csv", "geojson"] {
        let mut child = command()
            .args(["export", "--format", format, "--data-dir", data_s])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format}: {stderr}");
        assert!(stderr.contains("output was closed"), "{format}: {stderr}");
    }

    // A full disk: the error names where the export went, and an earlier export at that
    // path is left alone by one that failed (written beside it, renamed when complete).
    let out = cli(&["export", "--data-dir", data_s, "-o", "/dev/full"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/dev/full") && stderr.contains("No space left"),
        "{stderr}"
    );
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    let out = cli(&[
        "export",
        "--data-dir",
        d(&dir.path().join("no-such-store")),
        "-o",
        d(&dir.path().join("export.ndjson")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        std::fs::metadata(dir.path().join("export.ndjson"))
            .unwrap()
            .len()
            > 0
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), before.len());

    // `-o /dev/stdout` writes to the descriptor the shell opened (`>>` appends), not to a
    // fresh open of the file behind it at offset 0.
    let appended = dir.path().join("appended.txt");
    std::fs::write(&appended, "prior content\n").unwrap();
    let out = command()
        .args(["export", "--data-dir", data_s, "-o", "/dev/stdout"])
        .stdout(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&appended)
                .unwrap(),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&appended).unwrap();
    assert!(text.starts_with("prior content\n{"), "{text}");
    assert_eq!(text.lines().count(), 11, "{text}");

    // A device or a FIFO (feeding a compressor) is no file to sync: the export succeeds.
    for format in ["ndjson", "csv"] {
        let out = cli(&[
            "export",
            "--data-dir",
            data_s,
            "--format",
            format,
            "-o",
            "/dev/null",
        ]);
        assert!(out.status.success(), "-o /dev/null ({format}): {out:?}");
    }
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).expect("read the FIFO"))
    };
    let out = cli(&["export", "--data-dir", data_s, "-o", d(&fifo)]);
    assert!(out.status.success(), "-o FIFO: {out:?}");
    assert_eq!(reader.join().expect("reader").lines().count(), 10);
}

/// Ctrl-C during `incidentlog import` stops it between two lines, once the chunk being
/// written is durable, and says where: exit 1, exactly the lines before that one recorded,
/// and running the import again records the rest as new and the rest as repeats.
#[test]
fn an_interrupted_import_stops_between_lines_and_says_where() {
    use std::process::Stdio;

    let dir = temp_dir();
    let data = dir.path().join("data");
    let data_s = d(&data);
    const LINES: usize = 200_000;
    let (text, _) = new_incident_lines(LINES);
    let file = dir.path().join("many.ndjson");
    std::fs::write(&file, text).unwrap();

    let child = command()
        .args(["import", d(&file), "--data-dir", data_s])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_handled(child.id(), 2);
    send_signal(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    let all = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("interrupt again to quit at once"), "{all}");
    // "error: interrupted: the import stopped at line N (M events appended before); ..."
    let stderr = all
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{all}"));
    assert!(
        stderr.contains("interrupted: the import stopped"),
        "{stderr}"
    );
    let (line, appended) = stopped_at(stderr);
    assert!((1..=LINES).contains(&line), "{stderr}");
    assert_eq!(appended, line - 1, "{stderr}");
    cli_ok(&["verify", "--data-dir", data_s]);
    assert_eq!(events_in_log(&data), appended as u64);

    // Again: the rest lands, what landed is recognized.
    let report: Value =
        serde_json::from_str(&cli_ok(&["import", d(&file), "--data-dir", data_s])).unwrap();
    assert_eq!(report["appended"], (LINES - appended) as u64, "{report}");
    assert_eq!(report["duplicates"], appended as u64, "{report}");

    // An export to a file stopped by SIGTERM half-way leaves the earlier file as it was and
    // no temporary file beside it.
    let backup = dir.path().join("backup.ndjson");
    std::fs::write(&backup, "the earlier backup\n").unwrap();
    let child = command()
        .args(["export", "--data-dir", data_s, "-o", d(&backup)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let temp = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(".incidentlog-export-")
            })
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !temp() {
        assert!(
            std::time::Instant::now() < deadline,
            "no temporary export file"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Stopped first, so that the signal always lands while the export runs (it took the
    // whole log in one go on a fast machine, and the test then checked nothing).
    send_signal(child.id(), "STOP");
    send_signal(child.id(), "TERM");
    send_signal(child.id(), "CONT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!temp(), "a temporary export file was left behind");
    assert_eq!(
        std::fs::read_to_string(&backup).unwrap(),
        "the earlier backup\n"
    );
}

/// An import waiting for input (`import -` from a producer that stalled) sees a first Ctrl-C
/// only at its next line; a second one quits at once (exit 130), keeping what was written.
#[test]
fn a_second_interrupt_quits_an_import_waiting_for_input() {
    use std::io::Write;
    use std::process::Stdio;

    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut child = command()
        .args(["import", "-", "--data-dir", d(&data)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // One line recorded (written within a moment of the pause after it), then nothing more.
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", located_incident_line()).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let pid = child.id();
    wait_until_handled(pid, 2);
    let interrupt = || send_signal(pid, "INT");
    interrupt();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a first interrupt waits for the next line"
    );
    interrupt();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupt again to quit at once"),
        "{stderr}"
    );
    assert!(stderr.contains("quitting at once"), "{stderr}");
    cli_ok(&["verify", "--data-dir", d(&data)]);
    let line: Value = serde_json::from_str(&located_incident_line()).unwrap();
    let events = line["events"].as_array().unwrap().len() as u64;
    assert_eq!(events_in_log(&data), events);
}
