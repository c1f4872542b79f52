//! The tx lane's own runtime thread (see [`TxRuntime`]).

/// Redis connections of the tx lane per worker beside the one each partition's tx reader
/// keeps: the recorder's acks and the limiter's asks share these.
pub(super) const TX_REDIS_SPARE: usize = 4;

/// The tx lane's own runtime: one thread that runs the tx readers, their batch tasks and tx's
/// recorder, and drives the sockets of tx's Redis and Postgres connections. On a busy machine
/// the runtime's run queue is where a tx email would otherwise wait behind hundreds of ready
/// bulk tasks, at every step of its way (read, claim, send, record, ack); with a thread of its
/// own it waits only for the operating system to run that thread, which it does promptly for
/// a thread that mostly sleeps.
pub(super) struct TxRuntime {
    pub(super) handle: tokio::runtime::Handle,
    /// Dropped to stop the thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TxRuntime {
    pub(super) fn start() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("mailfleet-tx".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(TxRuntime {
            handle,
            _stop: stop,
        })
    }
}
