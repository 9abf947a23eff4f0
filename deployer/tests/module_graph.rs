//! No two modules of the deployer use each other, directly or through others: the graph of
//! `crate::…` and `super::…` references between the modules of `deployer/src` (each path
//! resolved to the longest module it names; a `mod` declaration is not a use; `#[cfg(test)]`
//! code and `tests.rs` modules are left out) has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module of `src` (its path in the crate) and its source, test code cut off.
fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = relative.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "main" | "lib")) {
                module.pop();
            }
            if module.last().is_some_and(|m| m == "tests") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap().to_owned();
            out.insert(module, code);
        }
    }
    out
}

/// The modules each module uses.
fn uses(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let path = regex_lite::Regex::new(r"\b(?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+").unwrap();
    let grouped = regex_lite::Regex::new(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}").unwrap();
    let mut out = BTreeMap::new();
    for (module, code) in modules {
        let mut paths: Vec<String> = path.find_iter(code).map(|m| m.as_str().to_owned()).collect();
        for group in grouped.captures_iter(code) {
            for item in group[2].split(',') {
                let item = item.trim().split([' ', ':']).next().unwrap_or("");
                if !item.is_empty() && item != "self" {
                    paths.push(format!("{}::{item}", &group[1]));
                }
            }
        }
        let mut used = BTreeSet::new();
        for p in paths {
            let mut parts = p.split("::");
            let mut base: Module = match parts.next() {
                Some("crate") => Vec::new(),
                _ => module[..module.len().saturating_sub(1)].to_vec(),
            };
            let rest: Vec<&str> = parts.collect();
            let mut rest = rest.as_slice();
            while let Some(("super", tail)) = rest.split_first().map(|(h, t)| (*h, t)) {
                base.pop();
                rest = tail;
            }
            let mut best = modules.contains_key(&base).then(|| base.clone());
            for part in rest {
                base.push((*part).to_owned());
                if !modules.contains_key(&base) {
                    break;
                }
                best = Some(base.clone());
            }
            if let Some(target) = best.filter(|t| t != module) {
                used.insert(target);
            }
        }
        out.insert(module.clone(), used);
    }
    out
}

/// A cycle through `from`, if there is one.
fn cycle(graph: &BTreeMap<Module, BTreeSet<Module>>, from: &Module) -> Option<Vec<Module>> {
    let mut path = vec![from.clone()];
    let mut seen = BTreeSet::new();
    fn walk(
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        from: &Module,
        path: &mut Vec<Module>,
        seen: &mut BTreeSet<Module>,
    ) -> bool {
        for next in &graph[path.last().unwrap()] {
            if next == from {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, from, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(graph, from, &mut path, &mut seen).then_some(path)
}

#[test]
fn no_two_modules_use_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(modules.contains_key(&vec!["commands".to_owned(), "stack".to_owned()]), "modules found");
    let graph = uses(&modules);
    assert!(
        graph[&vec!["commands".to_owned(), "cfn_stack".to_owned()]]
            .contains(&vec!["template".to_owned(), "params".to_owned()]),
        "references are found: {:?}",
        graph[&vec!["commands".to_owned(), "cfn_stack".to_owned()]]
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle(&graph, m))
        .map(|c| c.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "modules that use each other:\n{}", cycles.join("\n"));
}
