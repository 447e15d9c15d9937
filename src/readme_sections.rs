//! Tables in the README that the code generates, and the check that keeps
//! them true: a test per table compares the README's text between
//! `<!-- NAME:begin … -->` and `<!-- NAME:end -->` with what the code makes,
//! and with `UPDATE_README=1` writes it there instead.

/// Fails unless the README's `name` section is `table`; with
/// `UPDATE_README` set, writes `table` there. The begin marker names the
/// test that checks it: `{name}_table_matches_the_readme`.
pub(crate) fn check(name: &str, table: &str) {
    let begin = format!("<!-- {name}:begin (generated: cargo test {name}_table_matches_the_readme) -->\n");
    let end_marker = format!("<!-- {name}:end -->");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).expect("read the README");
    let start =
        readme.find(&begin).unwrap_or_else(|| panic!("the README marks where the {name} table goes")) + begin.len();
    let end =
        readme[start..].find(&end_marker).unwrap_or_else(|| panic!("the README marks where the {name} table ends"))
            + start;
    if std::env::var_os("UPDATE_README").is_some() {
        std::fs::write(path, format!("{}{table}{}", &readme[..start], &readme[end..])).expect("write the README");
        return;
    }
    assert_eq!(&readme[start..end], table, "README's {name} table is stale: run with UPDATE_README=1");
}
