//! Architecture invariant: the modules of `lab-harness` form a graph without cycles, so that
//! each can be read (and tested) knowing only the ones below it. Boot is one way: configuration
//! → QEMU arguments → launch → the orchestrator that picks a snapshot or a cold boot; nothing
//! lower calls back up.
//!
//! The graph is read from the code itself with `syn`: every `crate::…` and `super::…` path
//! outside `#[cfg(test)]` items is an edge. Doc links are not (they compile to nothing), and
//! `crate::Name` re-exported by lib.rs counts as an edge to the module that defines it.
//! Run with `--nocapture` to see the modules in layers, lowest first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

type Module = String;

/// Every edge `from → to`, with one path that makes it (for the error message).
type Graph = BTreeMap<Module, BTreeMap<Module, String>>;

fn harness_src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../harness/src")
}

#[test]
fn the_harness_modules_form_no_cycle() {
    let graph = module_graph(&harness_src());
    assert!(
        graph.len() > 10,
        "found only {} modules under {}",
        graph.len(),
        harness_src().display()
    );
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "modules of lab-harness that depend on each other in a circle:\n{}",
        cycles
            .iter()
            .map(|c| describe(&graph, c))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (depth, layer) in layers(&graph).iter().enumerate() {
        println!("layer {depth}: {}", layer.join(" "));
    }
}

/// Architecture invariant: a folder is one module too (`lan/` and its files, `spec/` and its),
/// and folders form no cycle with the rest; the switch, impairments and captures (`lan/`) are
/// a leaf that imports nothing above it: no lab, guest, host or spec.
#[test]
fn folders_form_no_cycle_and_the_lan_imports_nothing_above_it() {
    let graph = module_graph(&harness_src());
    let folded = fold(&graph);
    assert!(
        folded.contains_key("lan") && folded.contains_key("spec"),
        "{:?}",
        folded.keys()
    );
    let cycles = cycles(&folded);
    assert!(
        cycles.is_empty(),
        "folders of lab-harness in a circle with other modules:\n{}",
        cycles
            .iter()
            .map(|c| describe(&folded, c))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What the leaf may use: leaf types and helpers that know nothing of guests.
    let below = ["mac", "private"];
    let upward: Vec<String> = graph
        .iter()
        .filter(|(from, _)| *from == "lan" || from.starts_with("lan::"))
        .flat_map(|(from, edges)| {
            edges
                .iter()
                .filter(|(to, _)| {
                    !(to.as_str() == "lan"
                        || to.starts_with("lan::")
                        || below.contains(&to.as_str()))
                })
                .map(move |(to, path)| format!("{from} → {to} ({path})"))
        })
        .collect();
    assert!(
        upward.is_empty(),
        "lan/ imports from above it:\n{}",
        upward.join("\n")
    );
}

/// The graph with every module of a folder made one: `lan::switch` → `lan`.
fn fold(graph: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut folded = Graph::new();
    for (from, edges) in graph {
        let entry = folded.entry(top(from)).or_default();
        for (to, path) in edges {
            if top(to) != top(from) {
                entry
                    .entry(top(to))
                    .or_insert_with(|| format!("{from} → {to}: {path}"));
            }
        }
    }
    folded
}

/// The folding itself must find a cycle that runs through a folder's files.
#[test]
fn a_cycle_through_a_folder_is_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write("lib.rs", "mod a; mod f;");
    write("a.rs", "fn x() { crate::f::low::y() }");
    write("f/mod.rs", "pub mod low; pub mod high;");
    write("f/low.rs", "pub fn y() {}");
    write("f/high.rs", "fn z() { crate::a::x() }");
    let graph = module_graph(dir.path());
    assert!(cycles(&graph).is_empty(), "file by file, no cycle");
    assert_eq!(
        cycles(&fold(&graph)),
        vec![vec!["a".to_string(), "f".to_string()]]
    );
}

/// Architecture invariant: `LAB_*` settings are read from the environment in settings.rs
/// alone; everything else gets them as data.
#[test]
fn only_the_settings_module_reads_the_environment() {
    let src = harness_src();
    let mut readers = Vec::new();
    for file in rust_files(&src) {
        let module = module_of(&src, &file);
        let mut paths = Paths {
            all: true,
            ..Paths::default()
        };
        paths.visit_file(&parse(&file));
        let reads = paths
            .found
            .iter()
            .any(|p| p.len() >= 2 && p[p.len() - 2] == "env" && p[p.len() - 1].starts_with("var"));
        if reads && module != "settings" {
            readers.push(module);
        }
    }
    assert!(
        readers.is_empty(),
        "these modules read the environment; give them the value from lab_harness::Settings instead: {readers:?}"
    );
}

/// The check itself must catch a cycle: two modules that name each other are one.
#[test]
fn a_cycle_is_found_and_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write =
        |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
    write("lib.rs", "mod a; mod b; mod c; pub use a::A;");
    write("a.rs", "pub struct A; fn f() { crate::b::g() }");
    write("b.rs", "use crate::{c::C, A}; pub fn g() {}");
    write(
        "c.rs",
        "pub struct C; #[cfg(test)] mod tests { use crate::b::g; }",
    );
    let graph = module_graph(dir.path());
    let cycles = cycles(&graph);
    assert_eq!(cycles, vec![vec!["a".to_string(), "b".to_string()]]);
    assert!(describe(&graph, &cycles[0]).contains("a → b (crate::b::g)"));
    assert!(!graph["c"].contains_key("b"), "test code is no edge");
}

fn module_graph(src: &Path) -> Graph {
    let files = rust_files(src);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    let reexports = reexports(&parse(&src.join("lib.rs")));
    let mut graph = Graph::new();
    for file in &files {
        let from = module_of(src, file);
        if from.is_empty() {
            continue; // lib.rs: the facade that declares and re-exports, depending on all.
        }
        let mut paths = Paths::default();
        paths.visit_file(&parse(file));
        let edges = graph.entry(from.clone()).or_default();
        for path in paths.found {
            let absolute = absolute(&from, &path);
            if let Some(to) = target(&absolute, &modules, &reexports) {
                if to != from && !from.starts_with(&format!("{to}::")) {
                    edges.entry(to).or_insert_with(|| path.join("::"));
                }
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read harness/src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `lan/switch.rs` → `lan::switch`, `lan/mod.rs` → `lan`, `lib.rs` → ``.
fn module_of(src: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

fn parse(file: &Path) -> syn::File {
    let text = std::fs::read_to_string(file).expect("read a source file");
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()))
}

/// lib.rs's `pub use module::Name;` lines: `Name` → `module`.
fn reexports(lib: &syn::File) -> BTreeMap<String, Module> {
    let mut paths = Vec::new();
    for item in &lib.items {
        if let syn::Item::Use(item) = item {
            use_paths(&item.tree, &mut Vec::new(), &mut paths);
        }
    }
    let mut names = BTreeMap::new();
    for path in paths {
        if let [module @ .., name] = path.as_slice() {
            let module: Vec<&str> = module
                .iter()
                .map(String::as_str)
                .filter(|p| *p != "crate")
                .collect();
            names.insert(name.clone(), module.join("::"));
        }
    }
    names
}

/// A path as written in `from`, made absolute from the crate root (without `crate`).
fn absolute(from: &str, path: &[String]) -> Vec<String> {
    let mut here: Vec<String> = from.split("::").map(String::from).collect();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            here.clear();
            rest = &path[1..];
        }
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                here.pop();
                rest = &rest[1..];
            }
        }
        _ => return Vec::new(),
    }
    here.extend(rest.iter().cloned());
    here
}

/// The module an absolute path lands in: its longest prefix that is a module, or the module a
/// root-level re-export comes from.
fn target(
    path: &[String],
    modules: &BTreeSet<Module>,
    reexports: &BTreeMap<String, Module>,
) -> Option<Module> {
    let longest = (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|prefix| modules.contains(prefix));
    longest.or_else(|| {
        path.first()
            .and_then(|name| reexports.get(name))
            .filter(|m| modules.contains(*m))
            .cloned()
    })
}

/// Every `crate::`/`super::` path in code that is not `#[cfg(test)]`.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
    /// Every path, not only those into the crate.
    all: bool,
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        let into_crate = matches!(
            segments.first().map(String::as_str),
            Some("crate" | "super")
        );
        if self.all || into_crate {
            self.found.push(segments);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if !is_test(&item.attrs) {
            let mut paths = Vec::new();
            use_paths(&item.tree, &mut Vec::new(), &mut paths);
            self.found.extend(
                paths
                    .into_iter()
                    .filter(|p| matches!(p.first().map(String::as_str), Some("crate" | "super"))),
            );
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_test(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_test(&item.attrs) {
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        if !is_test(&item.attrs) {
            syn::visit::visit_item_impl(self, item);
        }
    }
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// The paths a `use` tree names: `use crate::{a::X, b}` → `crate::a::X`, `crate::b`.
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => push_use(prefix, Some(n.ident.to_string()), out),
        syn::UseTree::Rename(r) => push_use(prefix, Some(r.ident.to_string()), out),
        syn::UseTree::Glob(_) => push_use(prefix, None, out),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                use_paths(tree, prefix, out);
            }
        }
    }
}

fn push_use(prefix: &[String], last: Option<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    path.extend(last.filter(|l| l != "self"));
    out.push(path);
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(graph: &Graph) -> Vec<Vec<Module>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<Module>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, node: &'g str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            for next in self.graph.get(node).into_iter().flat_map(|e| e.keys()) {
                if !self.index.contains_key(next.as_str()) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next.as_str()]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next.as_str()) {
                    let low = self.low[node].min(self.index[next.as_str()]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let at = self.stack.iter().rposition(|n| *n == node).unwrap_or(0);
                let mut component: Vec<Module> = self.stack.drain(at..).map(String::from).collect();
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !tarjan.index.contains_key(node.as_str()) {
            tarjan.visit(node);
        }
    }
    tarjan.found.sort();
    tarjan.found
}

/// The edges inside one cycle, each with a path that makes it.
fn describe(graph: &Graph, cycle: &[Module]) -> String {
    let mut lines = vec![format!("  {{{}}}:", cycle.join(", "))];
    for from in cycle {
        for (to, path) in &graph[from] {
            if cycle.contains(to) {
                lines.push(format!("    {from} → {to} ({path})"));
            }
        }
    }
    lines.join("\n")
}

/// The modules by depth: those that use no other first, then those that use only those, ...
fn layers(graph: &Graph) -> Vec<Vec<Module>> {
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    while depth.len() < graph.len() {
        let before = depth.len();
        for (node, edges) in graph {
            if depth.contains_key(node.as_str()) {
                continue;
            }
            let below: Option<Vec<usize>> = edges
                .keys()
                .map(|to| depth.get(to.as_str()).copied())
                .collect();
            if let Some(below) = below {
                depth.insert(node, below.into_iter().max().map_or(0, |d| d + 1));
            }
        }
        if depth.len() == before {
            break; // the rest are in cycles, reported apart
        }
    }
    let mut layers: Vec<Vec<Module>> = Vec::new();
    for (node, d) in depth {
        if layers.len() <= d {
            layers.resize(d + 1, Vec::new());
        }
        layers[d].push(node.to_string());
    }
    layers
}
