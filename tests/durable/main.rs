//! Durability tests on PostgreSQL: the real `ticketing` binary as child processes, killed with
//! SIGKILL and restarted, several instances sharing one database, projection rebuilds, a
//! database outage behind a TCP proxy, SIGTERM, and a waiting room shared by two instances.
//! Each test creates its own database and topics. They need PostgreSQL and a Kafka-protocol
//! broker: `./scripts/services.sh` starts both.

mod api_on_postgres;
mod bus;
mod client;
mod crash;
mod group;
mod instances;
mod outage;
mod proxy;
mod queue;
mod rebuild;
