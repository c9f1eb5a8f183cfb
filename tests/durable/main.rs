//! Durability tests on PostgreSQL: the real `ticketing` binary as child processes, killed with
//! SIGKILL and restarted, several instances sharing one database (also for per-customer
//! limits), projection rebuilds, a database outage behind a TCP proxy, SIGTERM, a process
//! aborted between a payment's capture and its append (reconciliation), a logout on one
//! instance refused by another within the bound, a waiting room shared by two instances, and
//! the chaos suite: a flash sale with a fault injected mid-sale (`chaos`); `Idempotency-Key`s
//! used again once their answers are forgotten (`keys`).
//! Each test creates its own database and topics. They need PostgreSQL and a Kafka-protocol
//! broker: `./scripts/services.sh` starts both.

mod api_on_postgres;
mod bus;
mod chaos;
mod client;
mod crash;
mod group;
mod instances;
mod keys;
mod limits;
mod outage;
mod proxy;
mod queue;
mod rebuild;
mod reconcile;
mod sessions;
