//! `stocknet generate-catalog`: a catalog of many stocks for load tests (e.g. 10,000 for the
//! stock search), deterministic for a seed.

use std::io::Write;

#[derive(Debug, Clone, clap::Args)]
pub struct GenerateConfig {
    /// How many stocks.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub stocks: u32,
    /// Shares of each stock.
    #[arg(long, default_value_t = 100)]
    pub quantity: u64,
    /// Seed of the names and prices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

const FIRST: [&str; 16] = [
    "North", "Blue", "Iron", "Silver", "Bright", "Swift", "Green", "Stone", "Cloud", "River",
    "Solar", "Quantum", "Golden", "Red", "Ocean", "Prime",
];
const SECOND: [&str; 16] = [
    "Fish", "Boar", "Works", "Labs", "Foods", "Motors", "Energy", "Health", "Bank", "Games",
    "Mining", "Media", "Rail", "Air", "Soft", "Farms",
];

/// Writes the catalog as CSV (`name,price,quantity`) to stdout.
pub fn run(config: GenerateConfig) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_catalog(&config, &mut out)?;
    out.flush()?;
    Ok(())
}

fn write_catalog(config: &GenerateConfig, out: &mut impl Write) -> std::io::Result<()> {
    let mut state = config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    writeln!(out, "name,price,quantity")?;
    for index in 0..config.stocks {
        let (first, second) = (next() % 16, next() % 16);
        // The index keeps names distinct; the words give searches something to find.
        let name = format!(
            "{}{}{index:06}",
            FIRST[first as usize], SECOND[second as usize]
        );
        let cents = 100 + next() % 50_000;
        writeln!(
            out,
            "{name},{}.{:02},{}",
            cents / 100,
            cents % 100,
            config.quantity
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_catalog_is_one_the_catalog_accepts() {
        let config = GenerateConfig {
            stocks: 10_000,
            quantity: 100,
            seed: 7,
        };
        let mut text = Vec::new();
        write_catalog(&config, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let stocks = stocknet_common::catalog_file::parse(&text).unwrap();
        assert_eq!(stocks.len(), 10_000);
        assert!(stocks
            .values()
            .all(|s| s.quantity == 100 && s.price.cents() >= 100));
        let mut again = Vec::new();
        write_catalog(&config, &mut again).unwrap();
        assert_eq!(text.as_bytes(), again, "the same seed, the same catalog");
    }
}
