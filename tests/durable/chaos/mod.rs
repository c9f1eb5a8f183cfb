//! The chaos suite (issue 13): a flash sale on real processes with one fault injected
//! mid-sale per scenario, each ending with the same checks in SQL (`harness`): no
//! acknowledged purchase lost, no oversell, every capture recorded or refunded, no hold left
//! past its expiry, no 5xx but the fault's own 503s, and a purchase succeeding again on every
//! instance within 30 s without a restart. The faults: PostgreSQL restarted for real (a private
//! server, `postgres`, crash-restarted with `pg_ctl restart -m immediate`), slowed then cut
//! behind a proxy, Redis stopped, the broker restarted for real (a private tansu on durable
//! storage, `broker`: its topics, records and offsets outlive it), the payment processor slow
//! then failing, one of three instances killed -9. The process killed between a capture and
//! its append is `reconcile.rs`.

mod broker;
mod harness;
mod postgres;
mod scenarios;
