//! Secondary keys and foreign keys added after the data: tables whose key order,
//! implicit foreign-key indexes, FULLTEXT/SPATIAL keys, AUTO_INCREMENT keys and
//! missing primary keys make it easy to get wrong. The restored schema must print
//! exactly as the source (`mariadb-dump --no-data`), the data must be the same, and
//! a version 1 schema stream (no deferred keys) must still restore. Also: restoring
//! off the binary log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use mysql_async::prelude::Queryable;
use ops_core::testkit::engine::{MemoryDump, dump_to_memory};
use ops_core::{
    ByteStream, DatabaseEngine, DumpOptions, ErrorKind, RestoreOptions, StreamSource, StreamSpec,
};
use ops_mariadb::MariaDbEngine;

const SCHEMA: &str = r"
CREATE TABLE parent (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  maybe INT NULL,
  code VARCHAR(20) NOT NULL,
  name VARCHAR(50) NOT NULL,
  KEY by_name (name(10) DESC) COMMENT 'prefix, (desc)',
  UNIQUE KEY u_maybe (maybe),
  UNIQUE KEY u_code (code)
) ENGINE=InnoDB;
CREATE TABLE child (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  parent_code VARCHAR(20),
  parent_id INT,
  boss INT,
  note TEXT,
  KEY k_note (note(20)) IGNORED,
  CONSTRAINT zz_code FOREIGN KEY (parent_code) REFERENCES parent (code) ON UPDATE CASCADE,
  CONSTRAINT aa_id FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE SET NULL,
  FOREIGN KEY (boss) REFERENCES child (id)
) ENGINE=InnoDB;
CREATE TABLE texts (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  title VARCHAR(200),
  body TEXT,
  place POINT NOT NULL,
  FULLTEXT KEY ft_body (body),
  KEY k_title (title),
  FULLTEXT KEY ft_both (title, body),
  SPATIAL KEY sp_place (place)
) ENGINE=InnoDB;
CREATE TABLE ai_second (
  a INT NOT NULL,
  id INT NOT NULL AUTO_INCREMENT,
  b INT,
  c INT,
  PRIMARY KEY (a, id),
  KEY kb (b),
  KEY kid (id),
  KEY kc (c)
) ENGINE=InnoDB;
CREATE TABLE no_pk (
  a INT,
  b INT NOT NULL,
  c INT,
  KEY kc (c),
  UNIQUE KEY ua (a),
  UNIQUE KEY ub (b)
) ENGINE=InnoDB;
CREATE TABLE long_unique (
  id INT PRIMARY KEY,
  doc BLOB,
  k INT,
  KEY kk (k),
  UNIQUE KEY u_doc (doc)
) ENGINE=InnoDB;
CREATE TABLE parted (
  id INT NOT NULL,
  v INT,
  PRIMARY KEY (id),
  KEY kv (v)
) ENGINE=InnoDB PARTITION BY HASH (id) PARTITIONS 3;
CREATE TABLE mine (id INT PRIMARY KEY, v INT, KEY kv (v)) ENGINE=MyISAM;
CREATE TABLE big (
  id INT NOT NULL PRIMARY KEY,
  k INT NOT NULL,
  pad CHAR(100) NOT NULL,
  KEY k_1 (k),
  UNIQUE KEY u_pad (pad, id)
) ENGINE=InnoDB;
";

const DATA: &str = r"
INSERT INTO parent (maybe, code, name) VALUES (NULL, 'a', 'Alpha'), (NULL, 'b', 'Beta'), (7, 'c', 'Gamma');
INSERT INTO child (parent_code, parent_id, boss, note) VALUES ('a', 1, NULL, 'x'), ('b', 2, 1, 'y'), (NULL, NULL, 2, NULL);
INSERT INTO texts VALUES (1, 'hello world', 'some body text', POINT(1, 2)), (2, NULL, NULL, POINT(3, 4));
INSERT INTO ai_second (a, b, c) VALUES (1, 1, 1), (1, 2, 2), (2, 3, NULL);
INSERT INTO no_pk VALUES (NULL, 1, 1), (NULL, 2, 1), (3, 3, NULL);
INSERT INTO long_unique VALUES (1, 'aaa', 1), (2, NULL, 1), (3, NULL, 2);
INSERT INTO parted VALUES (1, 1), (2, 1), (3, NULL), (4, 5);
INSERT INTO mine VALUES (1, 1), (2, 2);
INSERT INTO big SELECT seq, seq % 97, CONCAT('row ', seq) FROM seq_1_to_3000;
ANALYZE TABLE big;
";

/// The pre-data schema stream rewritten as version 1 (no `deferred` fields).
struct AsVersion1(Arc<MemoryDump>);

#[async_trait]
impl StreamSource for AsVersion1 {
    fn streams(&self) -> &[StreamSpec] {
        self.0.streams()
    }

    async fn open(&self, name: &str) -> ops_core::Result<ByteStream> {
        if !name.starts_with("schema/") {
            return self.0.open(name).await;
        }
        let content = self.0.content(name).expect("schema stream");
        let mut out = Vec::new();
        for (i, line) in content
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let mut v: serde_json::Value = serde_json::from_slice(line).expect("json line");
            if i == 0 {
                assert_eq!(v["version"], 2, "{v}");
                v["version"] = 1.into();
            } else {
                v.as_object_mut().expect("object").remove("deferred");
            }
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        }
        let item: ops_core::Result<Bytes> = Ok(Bytes::from(out));
        Ok(Box::pin(futures::stream::iter([item])))
    }
}

async fn binlog_position(server: &ops_mariadb::ephemeral::EphemeralMariaDb) -> (String, u64) {
    let mut c = common::connect(server, "mysql").await;
    let row: mysql_async::Row = c
        .query_first("SHOW MASTER STATUS")
        .await
        .expect("status")
        .expect("binlog on");
    c.disconnect().await.ok();
    (row.get(0).expect("file"), row.get(1).expect("position"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_keys_restore_the_exact_schema() {
    let server = common::server().await;
    server
        .execute("", "CREATE DATABASE dk")
        .await
        .expect("create db");
    common::exec(&server, "dk", SCHEMA).await;
    common::exec(&server, "dk", DATA).await;

    let source = MariaDbEngine::new(&server.url_for("dk")).expect("url");
    let (dump, _) = dump_to_memory(
        &source,
        &DumpOptions::default()
            .with_jobs(2)
            .with_split_bytes(128 * 1024),
    )
    .await;

    // What the dump recorded: deferred keys where they can be, none for MyISAM.
    let pre = dump.content("schema/pre-data").expect("pre-data");
    let mut deferred = std::collections::BTreeMap::new();
    for line in pre.split(|&b| b == b'\n').filter(|l| !l.is_empty()).skip(1) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        if v["kind"] == "table" {
            let names: Vec<String> = v["deferred"]["indexes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|i| i["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            let fks = v["deferred"]["foreign_keys"].as_array().map_or(0, Vec::len);
            deferred.insert(v["name"].as_str().unwrap().to_owned(), (names, fks));
        }
    }
    let expect = |t: &str, names: &[&str], fks: usize| {
        let got = &deferred[t];
        assert_eq!(
            (got.0.iter().map(String::as_str).collect::<Vec<_>>(), got.1),
            (names.to_vec(), fks),
            "table {t}"
        );
    };
    expect("parent", &["u_code", "u_maybe", "by_name"], 0);
    expect("child", &["k_note", "zz_code", "aa_id", "boss"], 3);
    expect("texts", &["k_title", "sp_place", "ft_body", "ft_both"], 0);
    expect("ai_second", &["kc"], 0);
    expect("no_pk", &["kc"], 0);
    expect("long_unique", &["kk"], 0);
    expect("parted", &["kv"], 0);
    expect("mine", &[], 0);
    expect("big", &["u_pad", "k_1"], 0);
    let big_parts = dump
        .summaries()
        .iter()
        .filter(|(s, _)| s.table.as_ref().is_some_and(|t| t.name == "big"))
        .count();
    assert!(big_parts > 1, "big was not split");

    let schema_src = common::schema_dump(&server, "dk");
    let hashes_src = common::content_hashes(&server, "dk").await;
    let src = Arc::clone(&dump).into_source();
    for jobs in [1, 3] {
        let db = format!("dk_jobs{jobs}");
        source
            .with_database(&db)
            .restore(
                src.clone(),
                &RestoreOptions::default().with_create(true).with_jobs(jobs),
            )
            .await
            .unwrap_or_else(|e| panic!("restore with {jobs} jobs: {e}"));
        common::assert_same_text(
            &format!("mariadb-dump --no-data ({jobs} jobs)"),
            &schema_src,
            &common::schema_dump(&server, &db),
        );
        assert_eq!(hashes_src, common::content_hashes(&server, &db).await);
    }

    // A table filter: the child's foreign keys are added although its parent is not
    // restored (foreign_key_checks is off).
    server
        .execute("", "CREATE DATABASE dk_child")
        .await
        .unwrap();
    source
        .with_database("dk_child")
        .restore(
            src.clone(),
            &RestoreOptions::default().with_tables(vec![ops_core::TableRef::new("dk", "child")]),
        )
        .await
        .expect("filtered restore");
    let mut c = common::connect(&server, "dk_child").await;
    let fks: Vec<String> = c
        .query(
            "SELECT CONSTRAINT_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = 'dk_child' ORDER BY 1",
        )
        .await
        .unwrap();
    assert_eq!(fks, ["aa_id", "child_ibfk_1", "zz_code"]);
    c.disconnect().await.ok();

    // A version 1 schema stream restores with its keys in the CREATE TABLE.
    let v1: Arc<dyn StreamSource> = Arc::new(AsVersion1(src.clone()));
    source
        .with_database("dk_v1")
        .restore(
            v1,
            &RestoreOptions::default().with_create(true).with_jobs(2),
        )
        .await
        .expect("restore of a version 1 schema");
    common::assert_same_text(
        "mariadb-dump --no-data (version 1 stream)",
        &schema_src,
        &common::schema_dump(&server, "dk_v1"),
    );
    assert_eq!(hashes_src, common::content_hashes(&server, "dk_v1").await);

    // Off the binary log: nothing is written to it.
    let before = binlog_position(&server).await;
    source
        .with_database("dk_nolog")
        .with_binlog(false)
        .restore(
            src.clone(),
            &RestoreOptions::default().with_create(true).with_jobs(2),
        )
        .await
        .expect("restore without binlog");
    assert_eq!(
        before,
        binlog_position(&server).await,
        "the restore was logged"
    );
    assert_eq!(
        hashes_src,
        common::content_hashes(&server, "dk_nolog").await
    );

    // ... and it needs the privilege to turn the binlog off.
    server
        .execute(
            "",
            "CREATE USER plain@'%' IDENTIFIED BY 'pw'; GRANT ALL ON `dk_plain`.* TO plain@'%'",
        )
        .await
        .unwrap();
    let plain = MariaDbEngine::new(&format!(
        "mariadb://plain:pw@127.0.0.1:{}/dk_plain",
        server.port()
    ))
    .unwrap()
    .with_binlog(false);
    let err = plain
        .restore(src, &RestoreOptions::default().with_create(true))
        .await
        .expect_err("sql_log_bin needs a privilege");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("sql_log_bin"), "{err}");
}
