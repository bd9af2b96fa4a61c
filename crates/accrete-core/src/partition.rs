//! How a model is split over servers (issue 13, first piece): which rows of which tensor
//! each of P partitions holds, and which server holds each partition. Pure functions of
//! the layout, the partition count and the server list, so every server and client
//! computes the same map without asking.
//!
//! - A tensor with at least [`MIN_ROWS_PER_PART`] rows per partition (the hashed table,
//!   FM's factors, a wide dense layer) is split into P contiguous row ranges of nearly
//!   equal size. The hashed table's rows are hash values, so its ranges get even load.
//! - Every other tensor (biases, small dense weights, the `norm` statistics, whose count,
//!   mean and M2 rows merge together) lives whole on partition 0, the model's *home*.
//! - Partition i lives on server `(h + i) mod N`, where h is MurmurHash3 of the model's
//!   name and N the number of servers in the (sorted) peer list: models' homes spread
//!   over the servers, and a model's partitions over distinct servers while P ≤ N.
use crate::features::murmur3_32;
use crate::TensorSpec;

/// The fewest rows per partition for which a tensor is split rather than kept whole.
pub const MIN_ROWS_PER_PART: u64 = 1024;

/// Where one tensor's rows live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// All rows on one partition.
    Whole { part: u32 },
    /// Partition i holds rows `starts[i]..starts[i + 1]` (`starts` has P + 1 entries).
    Rows { starts: Vec<u64> },
}

/// A model's tensors over P partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioning {
    pub parts: u32,
    pub tensors: Vec<Placement>,
}

impl Partitioning {
    /// The plan for a layout over `parts` partitions (at least 1).
    pub fn plan(layout: &[TensorSpec], parts: u32) -> Partitioning {
        let parts = parts.max(1);
        let tensors = layout
            .iter()
            .map(|t| {
                if parts > 1 && !t.stats && t.rows >= MIN_ROWS_PER_PART * parts as u64 {
                    let starts = (0..=parts as u64).map(|i| i * t.rows / parts as u64).collect();
                    Placement::Rows { starts }
                } else {
                    Placement::Whole { part: 0 }
                }
            })
            .collect();
        Partitioning { parts, tensors }
    }

    /// The partition holding `row` of tensor `tensor` (an index into the layout), or
    /// `None` for a row or tensor out of range.
    pub fn part_of(&self, tensor: usize, row: u64) -> Option<u32> {
        match self.tensors.get(tensor)? {
            Placement::Whole { part } => Some(*part),
            Placement::Rows { starts } => {
                if row >= *starts.last()? {
                    return None;
                }
                // the last start not past the row
                Some((starts.partition_point(|s| *s <= row) - 1) as u32)
            }
        }
    }

    /// Rows of each tensor a partition holds: `(first row, rows)` per tensor, 0 rows
    /// where it holds none.
    pub fn rows_of(&self, part: u32, layout: &[TensorSpec]) -> Vec<(u64, u64)> {
        self.tensors
            .iter()
            .zip(layout)
            .map(|(p, t)| match p {
                Placement::Whole { part: home } if *home == part => (0, t.rows),
                Placement::Whole { .. } => (0, 0),
                Placement::Rows { starts } => {
                    let (a, b) = (starts[part as usize], starts[part as usize + 1]);
                    (a, b - a)
                }
            })
            .collect()
    }
}

/// The server (an index into the sorted peer list) of each of a model's `parts`
/// partitions, out of `servers`.
pub fn servers_of(model: &str, parts: u32, servers: usize) -> Vec<usize> {
    (0..parts).map(|i| server_of(model, i, servers)).collect()
}

/// The server of partition `part` of `model` (see [`servers_of`]).
pub fn server_of(model: &str, part: u32, servers: usize) -> usize {
    let h = murmur3_32(model.as_bytes(), 0) as u64;
    ((h + part as u64) % servers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{layout, ModelKind, ModelSpec};

    fn flights_layout() -> Vec<TensorSpec> {
        let mut s = ModelSpec::new("fl", ModelKind::Logistic);
        s.hash_bits = 20;
        s.features = 3;
        layout(&s)
    }

    #[test]
    fn the_hashed_table_is_split_and_small_tensors_stay_home() {
        let l = flights_layout();
        let p = Partitioning::plan(&l, 3);
        for (t, placement) in l.iter().zip(&p.tensors) {
            match (t.name, placement) {
                ("h", Placement::Rows { starts }) => assert_eq!(starts, &vec![0, 349_525, 699_050, 1 << 20]),
                ("h", other) => panic!("h is {other:?}"),
                (_, placement) => assert_eq!(placement, &Placement::Whole { part: 0 }, "{}", t.name),
            }
        }
        // every row of every tensor on exactly one partition, and the rows add up
        for (ti, t) in l.iter().enumerate() {
            let held: u64 = (0..3).map(|part| p.rows_of(part, &l)[ti].1).sum();
            assert_eq!(held, t.rows, "{}", t.name);
        }
        let h = l.iter().position(|t| t.name == "h").unwrap();
        assert_eq!(p.part_of(h, 0), Some(0));
        assert_eq!(p.part_of(h, 349_524), Some(0));
        assert_eq!(p.part_of(h, 349_525), Some(1));
        assert_eq!(p.part_of(h, (1 << 20) - 1), Some(2));
        assert_eq!(p.part_of(h, 1 << 20), None);
        assert_eq!(p.part_of(99, 0), None);
    }

    #[test]
    fn one_partition_is_the_whole_model() {
        let l = flights_layout();
        let p = Partitioning::plan(&l, 1);
        assert!(p.tensors.iter().all(|t| *t == Placement::Whole { part: 0 }));
        assert_eq!(Partitioning::plan(&l, 0).parts, 1);
    }

    #[test]
    fn partitions_go_to_distinct_servers_while_there_are_enough() {
        let s = servers_of("fl", 3, 3);
        let mut sorted = s.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, vec![0, 1, 2]);
        assert_eq!(servers_of("fl", 3, 3), s, "the rule is a pure function");
        assert!(servers_of("fl", 5, 2).iter().all(|i| *i < 2));
        // homes spread over servers
        let homes: std::collections::BTreeSet<usize> = (0..50).map(|i| servers_of(&format!("m{i}"), 1, 3)[0]).collect();
        assert_eq!(homes.len(), 3);
    }
}
