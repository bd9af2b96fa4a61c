//! The real data the scenarios use, shipped in the repository: the flights file (CC0) and
//! California housing, read, filtered and shuffled the same way everywhere.
use std::io::{BufRead, Write};
use std::path::Path;

pub const FLIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/flights.csv.gz");
pub const HOUSING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/california_housing.csv.gz");

/// The column options of the flights task (the data README's feature set).
pub const COLS: [&str; 6] = [
    "--label",
    "arr_delay>15",
    "--categorical",
    "carrier,origin,dest,month,day,hour,tailnum,flight",
    "--cross",
    "carrier:hour,origin:dest",
];

/// The header and rows of a gzipped CSV.
pub fn read_gz(path: &str) -> (String, Vec<String>) {
    let f = flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
    let mut lines = std::io::BufReader::new(f).lines().map(|l| l.unwrap());
    let header = lines.next().unwrap();
    (header, lines.collect())
}

/// Flights rows that have an arrival delay (the label), in time order.
pub fn labelled_flights() -> (String, Vec<String>) {
    let (header, rows) = read_gz(FLIGHTS);
    let delay = header.split(',').position(|c| c == "arr_delay").unwrap();
    let rows =
        rows.into_iter().filter(|l| l.split(',').nth(delay).is_some_and(|v| !v.is_empty() && v != "NA")).collect();
    (header, rows)
}

/// A seeded Fisher–Yates shuffle.
pub fn shuffle(rows: &mut [String], seed: u64) {
    let mut rng = accrete_core::rng::SplitMix64::new(seed);
    for i in (1..rows.len()).rev() {
        rows.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
}

/// Writes a CSV file: the header, then the rows.
pub fn write_csv(path: &Path, header: &str, rows: &[String]) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(w, "{header}").unwrap();
    for l in rows {
        writeln!(w, "{l}").unwrap();
    }
}
