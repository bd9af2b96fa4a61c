//! The real datasets shipped inside the binary, and `accrete data NAME --out DIR`, which
//! writes them as the README's examples read them: a time-ordered split (train on the past,
//! test on what came after) and a seeded random one.
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

const FLIGHTS: &[u8] = include_bytes!("../data/flights.csv.gz");
const CALIFORNIA: &[u8] = include_bytes!("../data/california_housing.csv.gz");

#[derive(Clone, Copy, ValueEnum)]
pub enum Dataset {
    /// The 327,346 New York flights of 2013 with a known arrival delay (nycflights13,
    /// CC0), sorted by (time_hour, sched_dep_time): the stream as it happened.
    Flights,
    /// 20,640 California districts of the 1990 census, median house value (scikit-learn's
    /// copy, public domain). No time order.
    California,
}

#[derive(Args)]
pub struct DataArgs {
    #[arg(value_enum)]
    dataset: Dataset,
    /// Directory to write into (created): all.csv, train.csv and test.csv (by time, for
    /// flights), random/train.csv and random/test.csv.
    #[arg(long)]
    out: PathBuf,
    /// The share of rows held out for testing, in (0, 1).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Seed of the random split.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// A dataset's CSV header and rows (without line ends).
pub struct Rows {
    pub header: String,
    pub rows: Vec<String>,
}

/// The flights with a known `arr_delay`, in time order: sorted by (`time_hour`,
/// `sched_dep_time`), ties in file order. The file itself is not in time order (its months
/// run 1, 10, 11, 12, 2, …).
pub fn flights() -> Result<Rows> {
    let Rows { header, rows } = read_gz(FLIGHTS, "flights")?;
    let cols: Vec<&str> = header.split(',').collect();
    let at = |name: &str| cols.iter().position(|c| *c == name).with_context(|| format!("flights: no {name} column"));
    let (delay, hour, sched) = (at("arr_delay")?, at("time_hour")?, at("sched_dep_time")?);
    let mut keyed: Vec<(String, u32, String)> = rows
        .into_iter()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let known = f.get(delay).is_some_and(|v| !v.is_empty() && *v != "NA");
            let key = (f.get(hour)?.to_string(), f.get(sched)?.parse().unwrap_or(0));
            known.then_some((key.0, key.1, line))
        })
        .collect();
    keyed.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    Ok(Rows { header, rows: keyed.into_iter().map(|(_, _, line)| line).collect() })
}

pub fn california() -> Result<Rows> {
    read_gz(CALIFORNIA, "california")
}

fn read_gz(bytes: &[u8], name: &str) -> Result<Rows> {
    let mut lines = std::io::BufReader::new(flate2::read::GzDecoder::new(bytes)).lines();
    let header = lines.next().with_context(|| format!("{name}: empty"))??;
    let rows = lines.collect::<std::io::Result<Vec<String>>>().with_context(|| format!("{name}: unreadable"))?;
    Ok(Rows { header, rows })
}

fn write_csv(path: &Path, header: &str, rows: &[&String]) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| path.display().to_string())?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    writeln!(w, "{header}")?;
    for r in rows {
        writeln!(w, "{r}")?;
    }
    w.flush().with_context(|| path.display().to_string())
}

pub fn run(a: DataArgs) -> Result<()> {
    if !(a.test_fraction > 0.0 && a.test_fraction < 1.0) {
        bail!("--test-fraction {}: must be between 0 and 1", a.test_fraction);
    }
    let (data, ordered) = match a.dataset {
        Dataset::Flights => (flights()?, true),
        Dataset::California => (california()?, false),
    };
    let random_dir = a.out.join("random");
    std::fs::create_dir_all(&random_dir).with_context(|| random_dir.display().to_string())?;
    let all: Vec<&String> = data.rows.iter().collect();
    let n_test = ((all.len() as f64) * a.test_fraction).round() as usize;
    let cut = all.len() - n_test;
    write_csv(&a.out.join("all.csv"), &data.header, &all)?;
    if ordered {
        // train on the past, test on what came after it
        write_csv(&a.out.join("train.csv"), &data.header, &all[..cut])?;
        write_csv(&a.out.join("test.csv"), &data.header, &all[cut..])?;
    }
    let mut shuffled = all.clone();
    let mut rng = accrete_core::rng::SplitMix64::new(a.seed);
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    write_csv(&random_dir.join("train.csv"), &data.header, &shuffled[..cut])?;
    write_csv(&random_dir.join("test.csv"), &data.header, &shuffled[cut..])?;
    if !ordered {
        // one train/test pair at the top level too, so every dataset reads the same way
        write_csv(&a.out.join("train.csv"), &data.header, &shuffled[..cut])?;
        write_csv(&a.out.join("test.csv"), &data.header, &shuffled[cut..])?;
    }
    let split = if ordered { "in time order" } else { "at random" };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"out": a.out, "rows": all.len(), "train": cut, "test": n_test, "split": split, "seed": a.seed})
        );
    } else {
        println!(
            "wrote {} rows to {}: all.csv, train.csv ({cut}) and test.csv ({n_test}) split {split}; random/ split with seed {}",
            all.len(),
            a.out.display(),
            a.seed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn flights_come_in_time_order() {
        let f = super::flights().unwrap();
        assert_eq!(f.rows.len(), 327_346);
        let cols: Vec<&str> = f.header.split(',').collect();
        let hour = cols.iter().position(|c| *c == "time_hour").unwrap();
        let month = cols.iter().position(|c| *c == "month").unwrap();
        let key = |r: &String| r.split(',').nth(hour).unwrap().to_string();
        assert!(f.rows.windows(2).all(|w| key(&w[0]) <= key(&w[1])));
        let first: u32 = f.rows[0].split(',').nth(month).unwrap().parse().unwrap();
        let last: u32 = f.rows[f.rows.len() - 1].split(',').nth(month).unwrap().parse().unwrap();
        assert_eq!((first, last), (1, 12));
    }
}
