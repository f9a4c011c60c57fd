//! Gauges read when scraped: for a value another part already keeps (a
//! semaphore's free permits, a connection's state), so that no loop has to
//! copy it into a metric and the scrape never sees it stale.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// A gauge whose value `read` gives at each scrape, named under the
/// registry's prefix (`sluice_`).
pub struct ScrapedGauge {
    name: &'static str,
    help: &'static str,
    read: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl ScrapedGauge {
    /// Registers `name` (without the prefix) in `registry`.
    pub fn register(
        registry: &mut Registry,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> i64 + Send + Sync + 'static,
    ) {
        registry.register_collector(Box::new(Self {
            name,
            help,
            read: Box::new(read),
        }));
    }
}

impl fmt::Debug for ScrapedGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapedGauge")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Collector for ScrapedGauge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gauge = ConstGauge::new((self.read)());
        let metric = encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    #[test]
    fn a_scraped_gauge_reports_the_value_at_each_scrape_under_the_prefix() {
        let mut registry = Registry::with_prefix("sluice");
        let value = Arc::new(AtomicI64::new(3));
        let read = value.clone();
        ScrapedGauge::register(&mut registry, "things", "Things now", move || {
            read.load(Ordering::Relaxed)
        });
        let admin = crate::Admin::new(registry);
        assert!(admin.encode_metrics().contains("sluice_things 3\n"));
        value.store(5, Ordering::Relaxed);
        assert!(admin.encode_metrics().contains("sluice_things 5\n"));
    }
}
