//! The controller's answers to the operator's recovery commands (docs/migration.md):
//! `migrate-release` on a source whose guest committed to a target that did not confirm,
//! and `migrate-commit` / `migrate-abort-incoming` on a target waiting for the commit.

use super::{
    state, status_name, Command, ControlError, Controller, Event, HelperSlot, Reply, Resume, State,
    Trigger, Verdict,
};
use crate::migrate::{Direction, IncomingCommand, ResolveReply, Resolved};
use migration::{
    engine::Status,
    recovery::{hex, AbortTokenFile, CommitFile, TokenOrigin},
};
use std::{path::Path, sync::mpsc::Sender};

impl Controller {
    /// `migrate-release`: the guest committed to a target that did not confirm runs again
    /// once an abort of that session (the target helper's token, or the guest owner's)
    /// verifies at its helper.
    pub(super) fn release(&mut self, path: &Path) -> Result<(), ControlError> {
        let command = Command::MigrateRelease(path.to_path_buf());
        let State::MigratedOut { transcript, .. } = self.state else {
            return Err(self.not_permitted(&command));
        };
        let bytes = std::fs::read(path).map_err(|source| ControlError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let file = AbortTokenFile::decode(&bytes).map_err(|source| ControlError::BadFile {
            path: path.to_path_buf(),
            source,
        })?;
        // A target that aborted before its key agreement confirmed names no session; its
        // helper's token still checks against this one.
        if file.transcript != [0; 32] && file.transcript != transcript {
            return Err(ControlError::OtherSession {
                path: path.to_path_buf(),
                file: file.transcript,
                ours: transcript,
            });
        }
        let HelperSlot::Attached(m) = &mut self.helper else {
            return Err(ControlError::NoHelper);
        };
        let helper = m.helpers_mut().first_mut().ok_or(ControlError::NoHelper)?;
        helper
            .call_ok_with(
                helper_abi::mailbox::Request {
                    op: helper_abi::mailbox::Op::RELEASE.0,
                    kind: file.origin.helper_origin().0,
                    bytes: 32,
                    ..helper_abi::mailbox::Request::default()
                },
                &[],
                &file.tag,
            )
            .map_err(|source| ControlError::Release {
                origin: file.origin.name(),
                source,
            })?;
        let resume = match self.state {
            State::MigratedOut { resume, .. } => resume,
            _ => Resume::Paused,
        };
        self.advance(Trigger::Released)?;
        if self.vm.sev_es() {
            // The vCPUs saved their state and hold: they never lost their registers.
            self.vm.release_holds();
        }
        if resume == Resume::Running {
            self.vm.resume();
        }
        let who = match file.origin {
            TokenOrigin::Target => "the target's abort token",
            TokenOrigin::Owner => "the guest owner's break-glass abort",
        };
        log::warn!(
            "session {} aborted by {who}: the guest runs here again",
            hex(&transcript)
        );
        if let Some(job) = &self.job {
            let mut p = job.progress.lock().unwrap_or_else(|e| e.into_inner());
            p.status = Status::Failed;
            p.error = Some(format!(
                "the committed session {} was aborted ({who}); the guest runs on the source again",
                hex(&transcript)
            ));
        }
        if resume == Resume::Running {
            self.emit(Event::Resume);
        }
        Ok(())
    }

    /// `migrate-commit` and `migrate-abort-incoming`: handed to the incoming migration,
    /// which answers on `reply` when it has acted (a commit runs the guest through this
    /// controller, so the answer cannot wait here).
    pub(super) fn resolve_incoming(
        &mut self,
        cmd: Command,
        reply: Sender<Result<Reply, ControlError>>,
    ) {
        if state::check(&self.state, cmd.kind()) != Verdict::Act {
            let _ = reply.send(Err(self.not_permitted(&cmd)));
            return;
        }
        let Some(job) = self
            .job
            .as_ref()
            .filter(|j| j.direction == Direction::Incoming && j.active())
        else {
            let _ = reply.send(Err(ControlError::NoIncoming));
            return;
        };
        let answer = move |r: Result<Resolved, String>| {
            let _ = reply.send(match r {
                Ok(Resolved::Committed) => Ok(Reply::Done),
                Ok(Resolved::Aborted {
                    transcript, file, ..
                }) => Ok(Reply::Aborted {
                    transcript,
                    token_file: file,
                }),
                Err(why) => Err(ControlError::Resolve(why)),
            });
        };
        let command = match cmd {
            Command::MigrateCommit(path) => {
                let status = job.progress().status;
                if status != Status::AwaitingCommit {
                    answer(Err(
                        ControlError::NotAwaitingCommit(status_name(status)).to_string()
                    ));
                    return;
                }
                let file = std::fs::read(&path)
                    .map_err(|source| ControlError::ReadFile {
                        path: path.clone(),
                        source,
                    })
                    .and_then(|bytes| {
                        CommitFile::decode(&bytes).map_err(|source| ControlError::BadFile {
                            path: path.clone(),
                            source,
                        })
                    });
                match file {
                    Ok(file) => IncomingCommand::Commit(file, ResolveReply::new(answer)),
                    Err(e) => {
                        answer(Err(migration::engine::chain(&e)));
                        return;
                    }
                }
            }
            Command::MigrateAbortIncoming(path) => {
                if let Some(p) = path {
                    job.files
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .token_file = Some(p);
                }
                IncomingCommand::Abort(ResolveReply::new(answer))
            }
            other => {
                answer(Err(format!(
                    "{} does not decide an incoming migration",
                    other.name()
                )));
                return;
            }
        };
        // If the job ended meanwhile, the command's reply answers as it drops.
        job.resolve(command);
    }
}
