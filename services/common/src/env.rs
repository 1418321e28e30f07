//! The environment variables StockNet's processes read, each named once: the services' and
//! `stocknet`'s flags take them as their `env`, and the operator sets them in the pods and jobs
//! it builds (`operator/tests/env_contract.rs` checks that each one it sets is read).

pub const BOOK_SNAPSHOT_EVERY: &str = "STOCKNET_BOOK_SNAPSHOT_EVERY";
pub const CACHE_SIZE: &str = "STOCKNET_CACHE_SIZE";
pub const CATALOG_PORT: &str = "STOCKNET_CATALOG_PORT";
pub const CATALOG_URL: &str = "STOCKNET_CATALOG_URL";
pub const DATA_DIR: &str = "STOCKNET_DATA_DIR";
pub const FAILURE_THRESHOLD: &str = "STOCKNET_FAILURE_THRESHOLD";
pub const FRONTEND_DNS: &str = "STOCKNET_FRONTEND_DNS";
pub const FRONTEND_INTERNAL_PORT: &str = "STOCKNET_FRONTEND_INTERNAL_PORT";
pub const FRONTEND_PORT: &str = "STOCKNET_FRONTEND_PORT";
pub const FRONTEND_URLS: &str = "STOCKNET_FRONTEND_URLS";
pub const HOST: &str = "STOCKNET_HOST";
pub const INITIAL_CATALOG: &str = "STOCKNET_INITIAL_CATALOG";
pub const LOAD_FRONTEND: &str = "STOCKNET_LOAD_FRONTEND";
pub const MARKET_PROTECTION_BPS: &str = "STOCKNET_MARKET_PROTECTION_BPS";
pub const MAX_IN_FLIGHT: &str = "STOCKNET_MAX_IN_FLIGHT";
pub const METRICS_PORT: &str = "STOCKNET_METRICS_PORT";
pub const NODE_ID: &str = "STOCKNET_NODE_ID";
pub const NO_CACHE: &str = "STOCKNET_NO_CACHE";
pub const NO_REPORTS: &str = "STOCKNET_NO_REPORTS";
pub const OPERATOR_METRICS: &str = "STOCKNET_OPERATOR_METRICS";
pub const ORDERS_IN_MEMORY: &str = "STOCKNET_ORDERS_IN_MEMORY";
pub const ORDER_PEERS: &str = "STOCKNET_ORDER_PEERS";
pub const ORDER_PORT: &str = "STOCKNET_ORDER_PORT";
pub const ORDER_PORTS: &str = "STOCKNET_ORDER_PORTS";
pub const ORDER_REPLICAS: &str = "STOCKNET_ORDER_REPLICAS";
pub const PRICE_TOLERANCE_BPS: &str = "STOCKNET_PRICE_TOLERANCE_BPS";
pub const PROBE_PERIOD: &str = "STOCKNET_PROBE_PERIOD";
pub const PROBE_PORT: &str = "STOCKNET_PROBE_PORT";
pub const PROBE_TIMEOUT_MS: &str = "STOCKNET_PROBE_TIMEOUT_MS";
pub const RATE_BURST: &str = "STOCKNET_RATE_BURST";
pub const RATE_LIMIT: &str = "STOCKNET_RATE_LIMIT";
pub const REPORT_AT: &str = "STOCKNET_REPORT_AT";
pub const REPORT_DATE: &str = "STOCKNET_REPORT_DATE";
pub const REPORT_DIR: &str = "STOCKNET_REPORT_DIR";
pub const REPORT_FRONTEND: &str = "STOCKNET_REPORT_FRONTEND";
pub const REPORT_MAIL_FROM: &str = "STOCKNET_REPORT_MAIL_FROM";
pub const REPORT_MAIL_TO: &str = "STOCKNET_REPORT_MAIL_TO";
pub const REPORT_SMTP_CREDENTIALS_FILE: &str = "STOCKNET_REPORT_SMTP_CREDENTIALS_FILE";
pub const REPORT_SMTP_URL: &str = "STOCKNET_REPORT_SMTP_URL";
pub const REPORT_WEBHOOK: &str = "STOCKNET_REPORT_WEBHOOK";
pub const REPORT_WEBHOOK_SECRET_FILE: &str = "STOCKNET_REPORT_WEBHOOK_SECRET_FILE";
pub const SECRET: &str = "STOCKNET_SECRET";
pub const SECRET_FILE: &str = "STOCKNET_SECRET_FILE";
pub const TRADES_IN_MEMORY: &str = "STOCKNET_TRADES_IN_MEMORY";
