//! `stocknet admin set-term`: recovering a stopped catalog or replica that accepted a bogus term.

mod common;

use std::process::Command;

use common::BIN;

fn set_term(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["admin", "set-term"])
        .args(args)
        .output()
        .expect("run stocknet admin")
}

#[test]
fn set_term_rewrites_a_replicas_and_the_catalogs_term() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    std::fs::write(dir.path().join("term-2"), "999999 3\n").unwrap();
    std::fs::write(
        dir.path().join("catalog.csv"),
        "# stocknet applied=4 term=999999\nname,price,quantity\nGameStart,15.99,96\n",
    )
    .unwrap();
    // A catalog journal record of the bogus term is folded in, then overridden.
    std::fs::write(dir.path().join("catalog.wal"), "term,1000000\n").unwrap();

    let output = set_term(&["--data-dir", &data, "--replica", "2", "--term", "7"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("term-2")).unwrap(),
        "7\n"
    );

    let output = set_term(&["--data-dir", &data, "--catalog", "--term", "7"]);
    assert!(output.status.success(), "{output:?}");
    let catalog = std::fs::read_to_string(dir.path().join("catalog.csv")).unwrap();
    assert!(
        catalog.starts_with("# stocknet applied=4 term=7\n"),
        "{catalog}"
    );
    assert!(catalog.contains("GameStart,15.99,96"), "{catalog}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("catalog.wal")).unwrap(),
        ""
    );

    // A replica that does not exist is an error, not a new file.
    let output = set_term(&["--data-dir", &data, "--replica", "9", "--term", "7"]);
    assert!(!output.status.success());
    assert!(!dir.path().join("term-9").exists());
    // One of --replica and --catalog is needed.
    assert!(!set_term(&["--data-dir", &data, "--term", "7"])
        .status
        .success());
}
