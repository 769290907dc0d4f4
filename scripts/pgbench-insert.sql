-- pgbench peer of the PostgreSQL store benchmark (crates/store/benches/pg.rs):
-- one event row per transaction into the store's own `events` table (same columns, same
-- indexes), with a sequence for the position. Run with:
--   pgbench -n -c 64 -j 2 -T 10 -f scripts/pgbench-insert.sql DBURL
-- (the database must have the incidentlog schema and `CREATE SEQUENCE bench_pos`).
INSERT INTO events (position, stream_id, stream_version, event_id, event_type, data,
                    recorded_at, recorded_by, append_first, append_last, hash)
VALUES (nextval('bench_pos'), gen_random_uuid(), 1, gen_random_uuid(), 'IncidentReported',
        '{"kind":"missile_strike","occurred_at":"2025-03-04T04:15:00Z","region":"UA-63","source":{"name":"Regional administration","kind":"official"},"locality":"Kharkiv","seq":1}',
        now(), 'bench', currval('bench_pos'), currval('bench_pos'),
        '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
