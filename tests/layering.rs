//! The architecture as a test: every `crate::` path in `src/` (outside unit tests) points one
//! way, so the module graph between files has no cycle. A new import that closes a cycle
//! fails here with the cycle spelled out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`proxy::routing`) → source text before its unit tests.
fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if path.is_dir() {
            modules(&path, &format!("{prefix}{stem}::"), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = match stem.as_str() {
                "mod" | "lib" | "main" => prefix.trim_end_matches("::").to_owned(),
                _ => format!("{prefix}{stem}"),
            };
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            // Doc comments may name anything; only code counts.
            let code: String = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(name, code);
        }
    }
}

/// Every module of the crate, by path.
fn source_modules() -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut all,
    );
    all
}

/// The modules each module names through `crate::…` (the longest path that is a module).
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<&str, BTreeSet<&str>> {
    modules
        .iter()
        .map(|(name, code)| {
            let mut deps = BTreeSet::new();
            for (at, _) in code.match_indices("crate::") {
                let path: String = code[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
                let found = (1..=parts.len())
                    .rev()
                    .map(|n| parts[..n].join("::"))
                    .find_map(|candidate| modules.get_key_value(&candidate).map(|(k, _)| k));
                if let Some(dep) = found.filter(|dep| *dep != name) {
                    deps.insert(dep.as_str());
                }
            }
            (name.as_str(), deps)
        })
        .collect()
}

fn find_cycle<'a>(
    graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    at: &'a str,
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<Vec<&'a str>> {
    if let Some(start) = path.iter().position(|m| *m == at) {
        let mut cycle = path[start..].to_vec();
        cycle.push(at);
        return Some(cycle);
    }
    if done.contains(at) {
        return None;
    }
    path.push(at);
    for dep in graph.get(at).into_iter().flatten() {
        if let Some(cycle) = find_cycle(graph, dep, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(at);
    None
}

#[test]
fn module_imports_point_one_way() {
    let all = source_modules();
    assert!(all.contains_key("proxy::routing") && all.contains_key("snapshot"));
    let graph = imports(&all);
    assert!(
        graph["proxy"].contains("snapshot"),
        "the parser lost imports"
    );
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = find_cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn flags_stay_a_pure_model() {
    let all = source_modules();
    let graph = imports(&all);
    for (module, deps) in graph
        .iter()
        .filter(|(m, _)| m.starts_with("flags::") || **m == "flags")
    {
        let foreign: Vec<_> = deps
            .iter()
            .filter(|d| !d.starts_with("flags") || d.starts_with("flags_api"))
            .filter(|d| !matches!(**d, "bucket" | "ordered_map" | "schedule"))
            .collect();
        assert!(foreign.is_empty(), "{module} imports {foreign:?}");
    }
}
