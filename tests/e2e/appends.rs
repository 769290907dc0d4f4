//! Appends: positions, idempotent retries (200, same positions, nothing recorded), version
//! conflicts, racing writers, read-your-writes.

use serde_json::json;

use crate::common::*;

#[test]
fn idempotent_retries_and_version_conflicts() {
    let (_dir, srv, t) = server_with_tokens(&[]);
    let incident = new_id();
    let body = batch(
        json!(0),
        vec![
            reported("missile_strike", "UA-63", "2026-01-07T05:30:00Z"),
            casualties("Regional authorities", 3),
        ],
    );
    let r = srv.append(&t.reporter, &incident, &body);
    r.expect(201);
    let created = r.json();
    assert_eq!(
        created,
        json!({"incident_id": incident, "version": 2, "first_position": 1, "last_position": 2})
    );
    // Read-your-writes: the summary includes it right away.
    let v = srv.get("/v1/regions/UA-63", &t.reader).json();
    assert_eq!(v["casualties"]["killed"]["best"], 3, "{v}");

    // The same request again (a client retry): 200, same body, nothing recorded.
    let head = srv.log_head(&t.admin);
    for _ in 0..2 {
        let r = srv.append(&t.reporter, &incident, &body);
        r.expect(200);
        assert_eq!(r.json(), created);
    }
    assert_eq!(srv.log_head(&t.admin), head);

    // Version 2 expected: goes through; stale version 2 again: 409 with expected/actual.
    let next = batch(json!(2), vec![casualties("Wire", 4)]);
    let r = srv.append(&t.reporter, &incident, &next);
    r.expect(201);
    assert_eq!(r.json()["version"], 3);
    assert_eq!(r.json()["first_position"], 3);
    let p = srv
        .append(
            &t.reporter,
            &incident,
            &batch(json!(2), vec![casualties("Wire", 5)]),
        )
        .expect_problem(409);
    assert_eq!(
        (p["expected"].clone(), p["actual"].clone()),
        (json!(2), json!(3)),
        "{p}"
    );
    // The retry of the request that did go through is still recognised.
    srv.append(&t.reporter, &incident, &next).expect(200);

    // "any" (the default when omitted) skips the version check.
    let r = srv.append(
        &t.reporter,
        &incident,
        &json!({"events": [casualties("Other wire", 6)]}),
    );
    r.expect(201);
    assert_eq!(r.json()["version"], 4);

    // Figures per SPEC 4: best = latest report (6); low/high over each source's latest
    // report: Regional authorities 3, Wire 4, Other wire 6.
    let v = srv
        .get(&format!("/v1/incidents/{incident}"), &t.reader)
        .json();
    assert_eq!(
        v["casualties"]["killed"],
        json!({"low": 3, "best": 6, "high": 6}),
        "{v}"
    );
    assert_eq!(v["version"], 4);
    let events = srv
        .get(&format!("/v1/incidents/{incident}/events"), &t.reader)
        .json();
    let versions: Vec<u64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
}

#[test]
fn racing_writers_on_one_version_exactly_one_wins() {
    let (_dir, srv, t) = server_with_tokens(&[]);
    let incident = new_id();
    srv.append(
        &t.reporter,
        &incident,
        &batch(json!(0), vec![reported("shelling", "UA-65", "2026-01-08")]),
    )
    .expect(201);
    let addr = srv.addr;
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let token = t.reporter.clone();
            let incident = incident.clone();
            std::thread::spawn(move || {
                Req::new(addr, "POST", &format!("/v1/incidents/{incident}/events"))
                    .token(&token)
                    .json(&batch(
                        json!(1),
                        vec![casualties(&format!("Source {i}"), i)],
                    ))
                    .send()
                    .status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, vec![201, 409, 409, 409, 409, 409, 409, 409]);
    let v = srv
        .get(&format!("/v1/incidents/{incident}"), &t.reader)
        .json();
    assert_eq!(v["version"], 2, "{v}");
}
