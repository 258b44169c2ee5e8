//! The provider table's defaults, the registry, and the CQ wakeups, against a
//! minimal in-test provider (no device behind it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use verbs::notify::Signal;
use verbs::provider::{register_provider, ContextOps, Provider};
use verbs::{AccessFlags, Context, VerbsError, WcOpcode, WcStatus, WorkCompletion};

/// Implements only the device name: every other op must report Unsupported.
#[derive(Debug)]
struct Bare;

impl ContextOps for Bare {
    fn device_name(&self) -> &str {
        "bare0"
    }
}

#[test]
fn defaults_report_unsupported() {
    let ctx = Context::open_with(Arc::new(Bare));
    assert_eq!(ctx.name(), "bare0");
    assert!(matches!(
        ctx.alloc_pd(),
        Err(VerbsError::Unsupported("alloc_pd"))
    ));
    assert!(matches!(
        ctx.create_cq(4),
        Err(VerbsError::Unsupported("create_cq"))
    ));
    assert!(matches!(
        ctx.query_device(),
        Err(VerbsError::Unsupported("query_device"))
    ));
    let addr: verbs::CmAddr = "unix:/nonexistent".parse().unwrap();
    assert!(matches!(
        verbs::CmListener::bind(&ctx, &addr),
        Err(verbs::CmError::Verbs(VerbsError::Unsupported("cm_listen")))
    ));
}

/// A provider with one CQ that the test fills by hand.
#[derive(Debug, Default)]
struct QueueDev {
    wcs: Mutex<Vec<WorkCompletion>>,
    signal: Mutex<Option<Arc<Signal>>>,
}

impl QueueDev {
    fn push(&self, wr_id: u64) {
        self.wcs.lock().unwrap().push(WorkCompletion {
            wr_id,
            status: WcStatus::Success,
            opcode: WcOpcode::Send,
            byte_len: 0,
            qp_num: 1,
            invalidated_rkey: None,
            vendor_err: 0,
        });
        if let Some(s) = self.signal.lock().unwrap().as_ref() {
            s.raise();
        }
    }
}

impl ContextOps for QueueDev {
    fn device_name(&self) -> &str {
        "queue0"
    }
    fn alloc_pd(&self) -> verbs::Result<u32> {
        Ok(1)
    }
    fn dealloc_pd(&self, _pd: u32) -> verbs::Result<()> {
        Ok(())
    }
    fn reg_mr(
        &self,
        _pd: u32,
        _b: Arc<verbs::DmaBuf>,
        _o: usize,
        _l: usize,
        _a: AccessFlags,
    ) -> verbs::Result<verbs::provider::MrKeys> {
        Ok(verbs::provider::MrKeys {
            lkey: 0x100,
            rkey: 0x100,
        })
    }
    fn dereg_mr(&self, _lkey: u32) -> verbs::Result<()> {
        Ok(())
    }
    fn create_cq(&self, _entries: u32, signal: Arc<Signal>) -> verbs::Result<u32> {
        *self.signal.lock().unwrap() = Some(signal);
        Ok(7)
    }
    fn destroy_cq(&self, _cq: u32) -> verbs::Result<()> {
        Ok(())
    }
    fn poll_cq(&self, _cq: u32, out: &mut Vec<WorkCompletion>, max: usize) -> verbs::Result<usize> {
        let mut q = self.wcs.lock().unwrap();
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        Ok(n)
    }
}

#[test]
fn cq_wakes_blocked_threads_and_tasks() {
    let dev = Arc::new(QueueDev::default());
    let ctx = Context::open_with(Arc::clone(&dev) as Arc<dyn ContextOps>);
    let cq = ctx.create_cq(16).unwrap();
    // Blocking wait with nothing posted times out, without spinning.
    let t0 = Instant::now();
    assert_eq!(cq.next_blocking(Duration::from_millis(30)).unwrap(), None);
    assert!(t0.elapsed() >= Duration::from_millis(30));
    // A completion pushed from another thread wakes the blocked waiter.
    let d2 = Arc::clone(&dev);
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        d2.push(5);
    });
    assert_eq!(
        cq.next_blocking(Duration::from_secs(5))
            .unwrap()
            .unwrap()
            .wr_id,
        5
    );
    h.join().unwrap();
    // Async: a tokio task awaiting the CQ is woken.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d3 = Arc::clone(&dev);
        let pusher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            d3.push(6);
            d3.push(7);
        });
        let mut v = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), cq.next_batch(&mut v, 8))
            .await
            .unwrap()
            .unwrap();
        pusher.await.unwrap();
        assert!(n >= 1);
        let mut rest = Vec::new();
        cq.poll(&mut rest, 8).unwrap();
        let ids: Vec<u64> = v.iter().chain(rest.iter()).map(|w| w.wr_id).collect();
        assert_eq!(ids, vec![6, 7]);
    });
    // MR accessors are bounded by the region.
    let pd = ctx.alloc_pd().unwrap();
    let buf = verbs::DmaBuf::new(100).unwrap();
    let mr = pd
        .reg_buf(Arc::clone(&buf), 10, 50, AccessFlags::LOCAL_WRITE)
        .unwrap();
    assert_eq!(mr.addr(), buf.addr() + 10);
    mr.write_at(0, &[1, 2, 3]).unwrap();
    assert_eq!(buf.to_vec(10, 3).unwrap(), vec![1, 2, 3]);
    assert!(matches!(
        mr.write_at(48, &[0; 3]),
        Err(VerbsError::OutOfBounds { .. })
    ));
    assert!(matches!(
        pd.reg_buf(buf, 60, 50, AccessFlags::NONE),
        Err(VerbsError::OutOfBounds { .. })
    ));
    assert_eq!(
        mr.sge(4, 8),
        verbs::Sge {
            addr: mr.addr() + 4,
            length: 8,
            lkey: 0x100
        }
    );
}

#[derive(Debug)]
struct Reg;

impl Provider for Reg {
    fn name(&self) -> &str {
        "test_provider"
    }
    fn devices(&self) -> Vec<String> {
        vec!["bare0".into()]
    }
    fn open(&self, _device: &str) -> verbs::Result<Arc<dyn ContextOps>> {
        Ok(Arc::new(Bare))
    }
}

#[test]
fn registry_opens_by_name() {
    register_provider(Arc::new(Reg));
    assert!(verbs::provider::device_list()
        .iter()
        .any(|d| d.name == "bare0" && d.provider == "test_provider"));
    assert_eq!(Context::open("bare0").unwrap().name(), "bare0");
    assert!(matches!(
        Context::open("nope"),
        Err(VerbsError::NoSuchDevice(_))
    ));
}
