//! The bus side of start-up: the outbox relay and the consumers (insights, webhooks), on
//! Kafka with `KAFKA_BROKERS` or on the in-process bus, and the handles shutdown uses to make
//! the relay flush and the consumers leave their groups.

use super::*;

/// The outbox relay's task and the switch that makes it flush and stop at shutdown.
pub(super) struct RelayTask {
    pub(super) stop: tokio::sync::watch::Sender<bool>,
    pub(super) task: JoinHandle<()>,
}

/// The bus consumers' tasks and the switch that makes them leave their groups and stop.
pub(super) struct ConsumersTask {
    pub(super) stop: tokio::sync::watch::Sender<bool>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

/// Starts the outbox relay and the bus consumers: on Kafka with `KAFKA_BROKERS`, else on the
/// in-process bus. The in-process bus forgets everything on restart, so its relay starts from
/// the beginning of the log (consumers skip what they applied); on Kafka the relay's cursor
/// is durable where the event store is.
pub(super) async fn start_bus(
    config: &Config,
    durable_cursor: Option<Arc<dyn RelayCursor>>,
    dlq: Arc<dyn DeadLetters>,
    handlers: Vec<Arc<dyn Handler>>,
    (store, metrics, clock): (&Arc<dyn EventStore>, &Arc<Metrics>, &Arc<dyn Clock>),
    (health, relay_breaker): (&Arc<ConsumerHealth>, &Arc<crate::breaker::Breaker>),
) -> anyhow::Result<(Arc<dyn EventBus>, DeadLetterAdmin, RelayTask, ConsumersTask)> {
    let topics = Topics::new(config.kafka_topic_prefix.clone());
    let (bus, cursor): (Arc<dyn EventBus>, Arc<dyn RelayCursor>) = match &config.kafka_brokers {
        None => (
            Arc::new(MemoryBus::new()),
            Arc::new(MemoryCursor::default()),
        ),
        Some(brokers) => (
            Arc::new(KafkaBus::new(brokers).context("configuring the Kafka clients")?),
            durable_cursor.unwrap_or_else(|| Arc::new(MemoryCursor::default())),
        ),
    };
    tracing::info!(bus = bus.kind(), prefix = %config.kafka_topic_prefix, "event bus");
    // Best effort: a broker that is down now must not stop the service; the relay creates
    // the topics again before it publishes.
    if let Err(e) = bus.ensure_topics(&topics.all()).await {
        tracing::warn!(error = %e, "cannot create the bus topics yet");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = RelayTask {
        stop,
        task: Relay {
            store: Arc::clone(store),
            bus: Arc::clone(&bus),
            topics: topics.clone(),
            cursor,
            metrics: Arc::clone(metrics),
            clock: Arc::clone(clock),
            breaker: Arc::clone(relay_breaker),
            answer_limit: config.pool.answer_limit(),
        }
        .spawn(stopped),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stall = crate::bus::consumer::StallPolicy {
        after: config.consumer_stall_after,
        recover: config.consumer_stall_recovery,
    };
    let mut tasks = Vec::new();
    for handler in &handlers {
        let consumer = Consumer {
            handler: Arc::clone(handler),
            dlq: Arc::clone(&dlq),
            metrics: Arc::clone(metrics),
            clock: Arc::clone(clock),
            retry: RetryPolicy::default(),
            answer_limit: config.pool.answer_limit(),
        };
        let (health, stop) = (Arc::clone(health), stopped.clone());
        let supervision = Supervision {
            stall,
            health,
            stop,
        };
        tasks.push(consumer.spawn(Arc::clone(&bus), topics.clone(), supervision));
    }
    let consumers = ConsumersTask { stop, tasks };
    Ok((
        bus,
        DeadLetterAdmin::new(dlq, handlers, Arc::clone(clock)),
        relay,
        consumers,
    ))
}
