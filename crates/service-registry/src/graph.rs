//! The dependency graph: missing dependencies, cycles and start layers.

use std::{collections::VecDeque, fmt};

use rustc_hash::FxHashMap;

/// A service names a dependency nobody registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The service that needs it.
    pub service: String,
    /// The name it needs.
    pub dependency: String,
}

/// Why no start order exists: every missing dependency and one cycle for
/// each group of services that depend on each other.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolveError {
    /// Every dependency that names no registered service, in registration order.
    pub missing: Vec<Missing>,
    /// One cycle per strongly connected group, as the path of names from its
    /// alphabetically first member back to itself (`["a", "b", "a"]` for
    /// `a → b → a`), groups ordered by that first name.
    pub cycles: Vec<Vec<String>>,
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { "; " };
            first = false;
            f.write_str(s)
        };
        for m in &self.missing {
            sep(f)?;
            write!(f, "service {:?} depends on {:?}, which is not registered", m.service, m.dependency)?;
        }
        for cycle in &self.cycles {
            sep(f)?;
            write!(f, "dependency cycle: {}", cycle.join(" → "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ResolveError {}

/// Resolves the start layers of a graph given as each node's name and
/// dependency names, in registration order.
///
/// Layer `k` holds the nodes whose longest dependency chain has length `k`;
/// each layer is sorted by name, so the result is deterministic.
pub(crate) fn layers(nodes: &[(&str, Vec<&str>)]) -> Result<Vec<Vec<usize>>, ResolveError> {
    let index: FxHashMap<&str, usize> = nodes.iter().enumerate().map(|(i, (name, _))| (*name, i)).collect();
    let mut error = ResolveError::default();
    // deps[i]: the indices node i depends on (known ones only, deduplicated).
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
    for (name, names) in nodes {
        let mut known = Vec::with_capacity(names.len());
        for dep in names {
            match index.get(dep) {
                Some(&j) => known.push(j),
                None => error.missing.push(Missing { service: (*name).to_owned(), dependency: (*dep).to_owned() }),
            }
        }
        known.sort_unstable();
        known.dedup();
        deps.push(known);
    }

    // Kahn's algorithm on "waiting for" counts, computing each node's depth.
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut depth = vec![0usize; nodes.len()];
    let mut ready: VecDeque<usize> = (0..nodes.len()).filter(|&i| waiting[i] == 0).collect();
    let mut placed = 0;
    while let Some(i) = ready.pop_front() {
        placed += 1;
        for &j in &dependents[i] {
            depth[j] = depth[j].max(depth[i] + 1);
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push_back(j);
            }
        }
    }
    if placed < nodes.len() {
        let stuck: Vec<usize> = (0..nodes.len()).filter(|&i| waiting[i] > 0).collect();
        error.cycles = cycles(nodes, &deps, &stuck);
    }
    if !error.missing.is_empty() || !error.cycles.is_empty() {
        return Err(error);
    }

    let mut layers: Vec<Vec<usize>> = vec![Vec::new(); depth.iter().max().map_or(0, |d| d + 1)];
    for (i, &d) in depth.iter().enumerate() {
        layers[d].push(i);
    }
    for layer in &mut layers {
        layer.sort_unstable_by(|&a, &b| nodes[a].0.cmp(nodes[b].0));
    }
    Ok(layers)
}

/// One cycle per strongly connected group among `stuck` (the nodes Kahn's
/// algorithm could not place: those on a cycle and those waiting on one).
fn cycles(nodes: &[(&str, Vec<&str>)], deps: &[Vec<usize>], stuck: &[usize]) -> Vec<Vec<String>> {
    let name = |i: usize| nodes[i].0;
    let mut in_stuck = vec![false; nodes.len()];
    for &i in stuck {
        in_stuck[i] = true;
    }
    let mut rdeps: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for &i in stuck {
        for &d in &deps[i] {
            if in_stuck[d] {
                rdeps[d].push(i);
            }
        }
    }
    let mut sorted = stuck.to_vec();
    sorted.sort_unstable_by(|&a, &b| name(a).cmp(name(b)));
    let mut assigned = vec![false; nodes.len()];
    let mut found = Vec::new();
    for &start in &sorted {
        if assigned[start] {
            continue;
        }
        let forward = reach(start, deps, &in_stuck);
        let backward = reach(start, &rdeps, &in_stuck);
        let group: Vec<usize> = (0..nodes.len()).filter(|&i| forward[i] && backward[i]).collect();
        for &i in &group {
            assigned[i] = true;
        }
        let self_loop = deps[start].contains(&start);
        if group.len() > 1 || self_loop {
            // `start` is the group's first name: `sorted` is in name order.
            let in_group: Vec<bool> = (0..nodes.len()).map(|i| forward[i] && backward[i]).collect();
            found.push(shortest_cycle(start, deps, &in_group, &name));
        }
    }
    found
}

/// The nodes reachable from `from` along `edges`, staying within `allowed`.
fn reach(from: usize, edges: &[Vec<usize>], allowed: &[bool]) -> Vec<bool> {
    let mut seen = vec![false; edges.len()];
    let mut stack = vec![from];
    seen[from] = true;
    while let Some(i) = stack.pop() {
        for &j in &edges[i] {
            if allowed[j] && !seen[j] {
                seen[j] = true;
                stack.push(j);
            }
        }
    }
    seen
}

/// The shortest path `start → … → start` inside one group, neighbours
/// visited in name order so the path is deterministic.
fn shortest_cycle<'a>(
    start: usize,
    deps: &[Vec<usize>],
    in_group: &[bool],
    name: &dyn Fn(usize) -> &'a str,
) -> Vec<String> {
    let mut parent: Vec<Option<usize>> = vec![None; deps.len()];
    let mut queue = VecDeque::from([start]);
    let mut visited = vec![false; deps.len()];
    while let Some(i) = queue.pop_front() {
        let mut next: Vec<usize> = deps[i].iter().copied().filter(|&j| in_group[j]).collect();
        next.sort_unstable_by(|&a, &b| name(a).cmp(name(b)));
        for j in next {
            if j == start {
                // Walk back from `i` to `start`, then read the chain forwards.
                let mut chain = Vec::new();
                let mut at = i;
                while at != start {
                    chain.push(at);
                    at = parent[at].unwrap_or(start);
                }
                let mut names = vec![name(start).to_owned()];
                names.extend(chain.iter().rev().map(|&k| name(k).to_owned()));
                names.push(name(start).to_owned());
                return names;
            }
            if !visited[j] {
                visited[j] = true;
                parent[j] = Some(i);
                queue.push_back(j);
            }
        }
    }
    // Unreachable for a group of a strongly connected component; report the
    // lone node rather than panic.
    vec![name(start).to_owned(), name(start).to_owned()]
}
