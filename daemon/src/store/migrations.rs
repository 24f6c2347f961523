//! Forward-only schema migrations. Migration `i` (0-based) takes the schema from version
//! `i` to `i + 1`; `PRAGMA user_version` holds the version. Never edit a shipped
//! migration: append a new one.

use std::path::Path;

use rusqlite::Connection;

use super::Error;

/// The migrations, oldest first.
const MIGRATIONS: &[&str] = &[
    // 1: the audit log of state-changing requests.
    "CREATE TABLE audit (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        ts            REAL    NOT NULL,
        uid           INTEGER NOT NULL,
        gid           INTEGER NOT NULL,
        pid           INTEGER NOT NULL,
        method        TEXT    NOT NULL,
        params_digest TEXT    NOT NULL,
        outcome       TEXT    NOT NULL
    );",
    // 2: the tuning journal. One row per kernel file cleanroom changed: its value before
    // cleanroom first touched it (`original`), the value cleanroom last wrote or is about
    // to write (`written`), and, while an apply is in progress, the value the file held
    // before that apply (`pending_prev`). With these three, any crash leaves the file at a
    // value the journal knows.
    "CREATE TABLE journal (
        path          TEXT PRIMARY KEY,
        knob          TEXT NOT NULL,
        kind          TEXT NOT NULL,
        original      TEXT NOT NULL,
        written       TEXT NOT NULL,
        pending_prev  TEXT,
        updated       REAL NOT NULL
    );
    CREATE TABLE tuning_refused (
        path     TEXT PRIMARY KEY,
        reason   TEXT NOT NULL
    );
    CREATE TABLE tuning_state (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        profile  TEXT,
        phase    TEXT NOT NULL,
        boot_id  TEXT NOT NULL,
        since    REAL NOT NULL
    );",
    // 3: run history and baselines. A batch is one run.start request (its measured runs);
    // records are stored as the JSON the protocol returns, so history outlives changes to
    // this schema.
    "CREATE TABLE runs (
        batch     TEXT PRIMARY KEY,
        ts        REAL    NOT NULL,
        uid       INTEGER NOT NULL,
        label     TEXT,
        argv      TEXT    NOT NULL,
        result    TEXT    NOT NULL
    );
    CREATE INDEX runs_ts ON runs(ts);
    CREATE TABLE baselines (
        name      TEXT PRIMARY KEY,
        batch     TEXT    NOT NULL,
        ts        REAL    NOT NULL,
        uid       INTEGER NOT NULL
    );
    CREATE TABLE shield (
        tid        INTEGER PRIMARY KEY,
        start_time INTEGER NOT NULL,
        original   TEXT    NOT NULL,
        written    TEXT    NOT NULL
    );
    CREATE TABLE shield_irq (
        path       TEXT PRIMARY KEY,
        original   TEXT NOT NULL,
        written    TEXT NOT NULL
    );
    CREATE TABLE shield_meta (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        raised_at  INTEGER NOT NULL,
        boot_id    TEXT    NOT NULL,
        shielded   TEXT    NOT NULL,
        online     TEXT    NOT NULL
    );",
    // 4: the cgroup shields. v1: the cpuset the other tasks were moved into (and the
    // mount they came from), the cpusets that gave up the shielded CPUs, and which thread
    // masks belong to moved tasks; v2: the cpuset partition of exclusive runs and the
    // controllers the shield enabled in the root cgroup.
    "ALTER TABLE shield ADD COLUMN moved INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE shield_meta ADD COLUMN cpuset_dir TEXT;
    ALTER TABLE shield_meta ADD COLUMN cpuset_mount TEXT;
    ALTER TABLE shield_meta ADD COLUMN partition TEXT;
    ALTER TABLE shield_meta ADD COLUMN root_enabled TEXT;
    CREATE TABLE shield_cpuset (
        path       TEXT PRIMARY KEY,
        depth      INTEGER NOT NULL,
        original   TEXT    NOT NULL,
        written    TEXT    NOT NULL
    );",
    // 5: ids handed out in blocks (`store::history::reserve_ids`): a batch id is never
    // given twice, whatever the clock does.
    "CREATE TABLE ids (
        name      TEXT PRIMARY KEY,
        next      INTEGER NOT NULL
    );",
    // 6: baselines are private to their owner (and admins) unless saved public.
    "ALTER TABLE baselines ADD COLUMN public INTEGER NOT NULL DEFAULT 0;",
    // 7: what listings show of a batch, in columns of their own, so a listing never reads
    // (or parses) the results: how many runs, how the last ended, the median wall time.
    "ALTER TABLE runs ADD COLUMN n_runs INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE runs ADD COLUMN end_reason TEXT;
    ALTER TABLE runs ADD COLUMN exit_code INTEGER;
    ALTER TABLE runs ADD COLUMN median_wall_ms REAL;
    UPDATE runs SET n_runs = coalesce(json_array_length(result, '$.samples.wall_ms'), nullif(json_array_length(result, '$.runs'), 0), 1), end_reason = json_extract(result, '$.end_reason'), exit_code = json_extract(result, '$.exit_code'), median_wall_ms = coalesce(json_extract(result, '$.stats.wall_ms.median'), json_extract(result, '$.wall_ms'));",
    // 8: the pin journal: one row per attribute of a task that pinning changed (a task is
    // its thread id and start time, so a reused id is another task): the value before
    // cleanroom first changed it and the value it wrote; `pid` and `comm` for listings,
    // `rule` the rule that placed it.
    "CREATE TABLE pin_journal (
        tid       INTEGER NOT NULL,
        start     INTEGER NOT NULL,
        attr      TEXT    NOT NULL,
        pid       INTEGER NOT NULL,
        comm      TEXT    NOT NULL,
        rule      TEXT    NOT NULL,
        original  TEXT    NOT NULL,
        written   TEXT    NOT NULL,
        PRIMARY KEY (tid, start, attr)
    );",
    // 9: pin rules added by hand (`pin.add`), in force until removed: the rule as the
    // request gave it (JSON), who added it and when.
    "CREATE TABLE pin_rules (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        spec      TEXT    NOT NULL,
        uid       INTEGER NOT NULL,
        created   REAL    NOT NULL
    );",
    // 10: cgroup files pin rules with only a cgroup selector wrote (`cpuset.cpus`,
    // `cpuset.mems`): the value before cleanroom first changed it and the value it wrote.
    "CREATE TABLE pin_cgroups (
        file      TEXT    PRIMARY KEY,
        rule      TEXT    NOT NULL,
        original  TEXT    NOT NULL,
        written   TEXT    NOT NULL
    );",
    // 11: verdicts replace Welch's t-test: a comparison stored before them moves to
    // `welch` in its result, kept as it was (the new `comparison` has other fields); a
    // label's history is read by label, with each batch's median CPU time (user + system;
    // for batches stored before `cpu_ms` was a series, the sum of the two medians) and
    // median instructions (none before they were counted).
    "UPDATE runs SET result = json_set(json_remove(result, '$.comparison'),
                                      '$.welch', json_extract(result, '$.comparison'))
     WHERE json_extract(result, '$.comparison.p_value') IS NOT NULL
       AND json_extract(result, '$.comparison.design') IS NULL;
    CREATE INDEX runs_label ON runs(label, ts);
    ALTER TABLE runs ADD COLUMN median_cpu_ms REAL;
    ALTER TABLE runs ADD COLUMN median_instructions REAL;
    UPDATE runs SET median_cpu_ms = coalesce(
        json_extract(result, '$.stats.user_ms.median') + json_extract(result, '$.stats.sys_ms.median'),
        json_extract(result, '$.user_ms') + json_extract(result, '$.sys_ms'));",
    // 12: a label's history follows CPU cycles too (performance counters, where the host
    // has a PMU; none before they were counted).
    "ALTER TABLE runs ADD COLUMN median_cycles REAL;
    UPDATE runs SET median_cycles = coalesce(
        json_extract(result, '$.stats.cycles.median'), json_extract(result, '$.counters.cycles'));",
];

/// The schema version this binary writes.
pub(crate) fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the database up to [`current_version`], one transaction per migration.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let sqlite = |source| Error::Sqlite {
        path: path.to_owned(),
        source,
    };
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite)?;
    let known = current_version();
    if found > known {
        return Err(Error::NewerSchema {
            path: path.to_owned(),
            found,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(sqlite)?;
        tx.execute_batch(sql).map_err(sqlite)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        tracing::info!(db = %path.display(), version = i + 1, "migrated state database");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_an_empty_database_to_the_current_version() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c, Path::new(":memory:")).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, current_version());
        // Idempotent.
        migrate(&mut c, Path::new(":memory:")).unwrap();
    }

    #[test]
    fn comparisons_stored_before_verdicts_are_kept_as_welch() {
        let mut c = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..10] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "user_version", 10).unwrap();
        let old = r#"{"id":"1","wall_ms":5.0,"comparison":{"metric":"wall_ms","p_value":0.01,"verdict":"no_change"}}"#;
        c.execute(
            "INSERT INTO runs (batch, ts, uid, label, argv, result) VALUES ('1', 1, 0, NULL, '[]', ?1)",
            [old],
        )
        .unwrap();
        migrate(&mut c, Path::new(":memory:")).unwrap();
        let result: String = c
            .query_row("SELECT result FROM runs", [], |r| r.get(0))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&result).unwrap();
        assert!(v.get("comparison").is_none(), "{v}");
        assert_eq!(v["welch"]["verdict"], "no_change", "{v}");
        assert_eq!(v["welch"]["p_value"], 0.01, "{v}");
    }

    #[test]
    fn batches_stored_before_the_listing_columns_get_them_from_their_results() {
        let mut c = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..6] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "user_version", 6).unwrap();
        let one = r#"{"id":"r1","end_reason":"signaled","exit_code":null,"wall_ms":4.5}"#;
        let three = r#"{"id":"r3","end_reason":"exited","exit_code":0,"wall_ms":9.0,
            "runs":[{"wall_ms":1.0},{"wall_ms":9.0},{"wall_ms":2.0}],
            "stats":{"wall_ms":{"median":2.0}}}"#;
        for (batch, result) in [("1", one), ("3", three)] {
            c.execute(
                "INSERT INTO runs (batch, ts, uid, label, argv, result) VALUES (?1, 0, 0, NULL, '[]', ?2)",
                [batch, result],
            )
            .unwrap();
        }
        migrate(&mut c, Path::new(":memory:")).unwrap();
        let row = |b: &str| {
            c.query_row(
                "SELECT n_runs, end_reason, exit_code, median_wall_ms FROM runs WHERE batch = ?1",
                [b],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, f64>(3)?,
                    ))
                },
            )
            .unwrap()
        };
        assert_eq!(row("1"), (1, "signaled".into(), None, 4.5));
        assert_eq!(row("3"), (3, "exited".into(), Some(0), 2.0));
    }
}
