//! The client contract (`../shared/CONTRACT.md`, beside the repository) fixes
//! names clients rely on: every type, field, argument and enum value that its
//! schema blocks name must be in `schema.graphql` (which `http.rs` checks
//! against the code). Fields and values may be added beside them. A block
//! under a heading in [`NOT_BUILT`] is skipped until its feature lands.

use std::collections::{BTreeSet, HashMap};

use async_graphql::parser::{
    parse_schema,
    types::{TypeKind, TypeSystemDefinition},
};

/// Headings (their start) of contract sections whose feature is not built
/// yet; each goes from this list in the change that builds it.
const NOT_BUILT: &[&str] = &["Sign-in with another provider", "Sign-in without a password"];

/// What an SDL text names: `Type`, `Type.field`, `Type.field(arg)`,
/// `Input.field`, `Enum.VALUE`.
fn names(sdl: &str, what: &str) -> BTreeSet<String> {
    let document = parse_schema(sdl).unwrap_or_else(|e| panic!("{what} does not parse: {e}\n{sdl}"));
    let mut names = BTreeSet::new();
    for definition in document.definitions {
        let TypeSystemDefinition::Type(ty) = definition else { continue };
        let ty = ty.node;
        let name = ty.name.node.to_string();
        names.insert(name.clone());
        match ty.kind {
            TypeKind::Object(object) => {
                for field in object.fields {
                    let field_name = format!("{name}.{}", field.node.name.node);
                    for argument in &field.node.arguments {
                        names.insert(format!("{field_name}({})", argument.node.name.node));
                    }
                    names.insert(field_name);
                }
            }
            TypeKind::InputObject(input) => {
                names.extend(input.fields.iter().map(|f| format!("{name}.{}", f.node.name.node)));
            }
            TypeKind::Enum(e) => {
                names.extend(e.values.iter().map(|v| format!("{name}.{}", v.node.value.node)));
            }
            _ => {}
        }
    }
    names
}

/// The contract's ```graphql blocks, each with the heading it stands under.
fn schema_blocks(contract: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let (mut heading, mut block): (String, Option<String>) = (String::new(), None);
    for line in contract.lines() {
        match &mut block {
            Some(text) if line.trim_start().starts_with("```") => {
                blocks.push((heading.clone(), std::mem::take(text)));
                block = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None if line.trim_start().starts_with("```graphql") => block = Some(String::new()),
            None if line.starts_with('#') => heading = line.trim_start_matches('#').trim().to_owned(),
            None => {}
        }
    }
    blocks
}

#[test]
fn the_schema_has_every_name_the_client_contract_fixes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/CONTRACT.md");
    let Ok(contract) = std::fs::read_to_string(path) else {
        // CI always has it beside the clone; a lone clone may not.
        assert!(std::env::var_os("CI").is_none(), "the client contract is missing at {path}");
        eprintln!("skipped: no client contract at {path}");
        return;
    };
    let schema = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    let ours = names(&schema, "schema.graphql");
    let mut missing: HashMap<String, Vec<String>> = HashMap::new();
    let blocks = schema_blocks(&contract);
    assert!(blocks.len() >= 4, "the contract's schema blocks were not found: {}", blocks.len());
    for (heading, block) in blocks {
        if NOT_BUILT.iter().any(|n| heading.starts_with(n)) {
            continue;
        }
        for name in names(&block, &format!("the contract's block under {heading:?}")) {
            if !ours.contains(&name) {
                missing.entry(heading.clone()).or_default().push(name);
            }
        }
    }
    assert!(missing.is_empty(), "schema.graphql lacks names the client contract fixes: {missing:#?}");
}
