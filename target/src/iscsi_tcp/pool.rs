//! The dedicated thread pool that runs SCSI commands against the device server, off
//! the async runtime. A connection hands over every command that became ready in one
//! pass over its received bytes as one batch, cut into at most one chunk per thread;
//! each chunk's answers come back in one message. Batching keeps thread wake-ups per
//! command low, which is what bounds small-block IOPS.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::command::{self, Answer, Job};

/// Data per chunk: a chunk of 4 KiB commands runs 16 of them per wake-up; a 64 KiB
/// or larger command gets a chunk (and so a thread) of its own.
pub const CHUNK_BYTES: usize = 64 * 1024;

struct Chunk {
    jobs: Vec<Job>,
    reply: mpsc::UnboundedSender<Vec<Answer>>,
}

/// Worker threads fed through one queue.
#[derive(Debug)]
pub struct CommandPool {
    tx: crossbeam_channel::Sender<ChunkBox>,
    threads: usize,
}

/// A chunk behind a pointer, so the queue holds small items.
struct ChunkBox(Box<Chunk>);

impl std::fmt::Debug for ChunkBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({} jobs)", self.0.jobs.len())
    }
}

impl CommandPool {
    /// Start `threads` workers (at least one). They exit when the pool is dropped.
    pub fn new(threads: usize) -> std::io::Result<Arc<CommandPool>> {
        let threads = threads.max(1);
        let (tx, rx) = crossbeam_channel::unbounded::<ChunkBox>();
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("iser-target-io-{i}"))
                .spawn(move || {
                    for ChunkBox(chunk) in rx {
                        let Chunk { jobs, reply } = *chunk;
                        let answers: Vec<Answer> = jobs.into_iter().map(command::run).collect();
                        let _ = reply.send(answers);
                    }
                })?;
        }
        Ok(Arc::new(CommandPool { tx, threads }))
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `jobs`; their answers arrive on `reply`, one message per chunk. Chunks
    /// carry up to [`CHUNK_BYTES`] of data each, so that small commands share a
    /// wake-up while large ones spread over the threads.
    pub fn submit(&self, jobs: Vec<Job>, reply: &mpsc::UnboundedSender<Vec<Answer>>) {
        let mut chunk = Vec::new();
        let mut weight = 0usize;
        for job in jobs {
            let w = job.weight();
            if !chunk.is_empty() && weight + w > CHUNK_BYTES {
                self.send(std::mem::take(&mut chunk), reply);
                weight = 0;
            }
            weight += w;
            chunk.push(job);
        }
        if !chunk.is_empty() {
            self.send(chunk, reply);
        }
    }

    fn send(&self, jobs: Vec<Job>, reply: &mpsc::UnboundedSender<Vec<Answer>>) {
        let chunk = Chunk {
            jobs,
            reply: reply.clone(),
        };
        if let Err(crossbeam_channel::SendError(ChunkBox(c))) =
            self.tx.send(ChunkBox(Box::new(chunk)))
        {
            // No worker left (shutdown): run here rather than lose the commands.
            let answers = c.jobs.into_iter().map(command::run).collect();
            let _ = c.reply.send(answers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi_tcp::command::tests::RamLun;
    use crate::service::{Nexus, ScsiService};

    #[test]
    fn batches_run_and_answer_every_job() {
        let pool = CommandPool::new(2).unwrap();
        let svc: Arc<dyn ScsiService> = Arc::new(RamLun::new(16));
        let nexus = Arc::new(Nexus {
            initiator: "iqn.x".into(),
            isid: [0; 6],
            tsih: 1,
        });
        let jobs: Vec<Job> = (0..10u32)
            .map(|i| Job {
                service: svc.clone(),
                nexus: nexus.clone(),
                lun_field: 0,
                cdb: vec![0x28, 0, 0, 0, 0, i as u8, 0, 0, 1, 0],
                itt: i,
                edtl: 512,
                read: true,
                out_len: 0,
                data_out: Vec::new(),
                max_segment: 8192,
                max_burst: 262_144,
                counters: Vec::new(),
            })
            .collect();
        let (tx, mut rx) = mpsc::unbounded_channel();
        pool.submit(jobs, &tx);
        let mut itts = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while itts.len() < 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "answers did not arrive"
            );
            match rx.try_recv() {
                Ok(answers) => itts.extend(answers.into_iter().map(|a| a.itt)),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        itts.sort_unstable();
        assert_eq!(itts, (0..10).collect::<Vec<_>>());
    }
}
