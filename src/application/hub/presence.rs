//! Presence: the user list, and how state changes reach everyone: direct
//! notices under the state lock, presence in numbered batches broadcast
//! outside it (the module docs of [`super`] say why).

use std::collections::hash_map::Entry;

use std::sync::TryLockError;

use super::*;

/// Presence changes not yet broadcast: the latest state of each user, in the
/// order the users first changed.
#[derive(Debug, Default)]
pub(super) struct PendingPresence {
    order: Vec<UserId>,
    latest: HashMap<UserId, (Arc<str>, UserState)>,
}

impl PendingPresence {
    pub(super) fn add(&mut self, user: UserId, username: Arc<str>, state: UserState) {
        match self.latest.entry(user) {
            Entry::Occupied(mut e) => {
                e.insert((username, state));
            }
            Entry::Vacant(e) => {
                e.insert((username, state));
                self.order.push(user);
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The first `limit` pending changes, in order; the rest stay pending.
    pub(super) fn take_first(&mut self, limit: usize) -> Vec<(UserId, Notice)> {
        let rest = if limit < self.order.len() {
            self.order.split_off(limit)
        } else {
            Vec::new()
        };
        let first = std::mem::replace(&mut self.order, rest);
        first
            .into_iter()
            .filter_map(|user| {
                let (username, state) = self.latest.remove(&user)?;
                debug!("presence user_id={user} state={state}");
                Some((
                    user,
                    Notice::Presence {
                        user,
                        username,
                        state,
                    },
                ))
            })
            .collect()
    }
}

impl Hub {
    /// Every registered user with their presence, then the guests online, in id order.
    pub fn user_list(&self) -> Vec<(UserId, Arc<str>, UserState)> {
        let users = self.users.list();
        let state = lock(&self.state);
        let guests = state.guests.iter().filter_map(|id| {
            let session = state.online.get(id)?;
            Some((*id, session.username.clone(), state.presence(*id)))
        });
        let mut list = Vec::with_capacity(users.len() + state.guests.len());
        list.extend(
            users
                .iter()
                .map(|(id, name)| (*id, name.clone(), state.presence(*id))),
        );
        list.extend(guests);
        list
    }

    /// Delivers `out` and adds the presence changes since `before` to the
    /// pending batch, in state order (see the module docs). Direct notices
    /// and session ends go out under the state lock (a few pushes); the
    /// presence fan-out never does.
    pub(super) fn commit(
        &self,
        mut state: MutexGuard<'_, HubState>,
        before: Before,
        out: Outgoing,
    ) {
        let mut changed = Vec::new();
        for (user, username, was) in before.0 {
            let now = state.presence(user);
            if now != was {
                changed.push((user, username, now));
            }
        }
        for (user, username) in out.gone {
            if !changed.iter().any(|(u, _, _)| *u == user) && !state.online.contains_key(&user) {
                changed.push((user, username, UserState::Disconnected));
            }
        }
        let mut wake = out.wake_timer;
        // What is said now comes after the presence changes decided before
        // it: seal them, so each direct recipient is caught up on them first.
        // This change's own presence goes in after (a ring is seen after
        // "Available", before "Busy").
        let has_news = !(out.direct.is_empty() && out.shared.is_empty());
        let sealed_now = has_news && !state.pending.is_empty();
        if sealed_now {
            state.seal(usize::MAX);
            // Everyone else gets the sealed batch from the timer, now.
            state.presence_due = Some(Instant::now());
            wake = true;
        }
        for (conn, why) in out.end {
            self.delivery.end_session(conn, why);
        }
        for (user, notice) in out.direct {
            self.delivery.catch_up(user, &state.in_flight);
            self.delivery.to_user(user, notice);
        }
        for (users, notice) in out.shared {
            for user in &users {
                self.delivery.catch_up(*user, &state.in_flight);
            }
            self.delivery.to_users(&users, notice);
        }
        for (user, username, presence) in changed {
            state.pending.add(user, username, presence);
        }
        if !state.pending.is_empty() && state.presence_due.is_none() {
            state.presence_due = Some(Instant::now() + PRESENCE_BATCH);
            wake = true;
        }
        if wake {
            self.timer_wake.notify_one();
        }
        // Once stopping, the timer is gone: nothing waits for a batch.
        let now_too = state.stopping && !(state.pending.is_empty() && state.in_flight.is_empty());
        drop(state);
        if now_too {
            self.flush_presence();
        } else if sealed_now {
            self.broadcast_sealed();
        }
    }

    /// After a commit sealed a batch, the committing thread broadcasts the
    /// sealed batches itself, so that everyone hears of a change about as
    /// soon as its direct recipients do, as long as that costs at most
    /// [`FLUSH_PUSHES`] pushes and nobody else is broadcasting; otherwise the
    /// timer does it (it was woken for it).
    fn broadcast_sealed(&self) {
        let _order = match self.broadcasting.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let batches = {
            let state = lock(&self.state);
            let audience = state.online.len().max(1);
            let mut pushes = 0;
            let mut batches = Vec::new();
            for batch in &state.in_flight {
                pushes += batch.about.len() * audience;
                if pushes > FLUSH_PUSHES {
                    break;
                }
                batches.push(batch.clone());
            }
            batches
        };
        let Some(last) = batches.last().map(|b| b.id) else {
            return;
        };
        for batch in &batches {
            self.delivery.broadcast(batch);
        }
        lock(&self.state).in_flight.retain(|b| b.id > last);
    }

    /// Seals the pending presence changes (at most [`FLUSH_PUSHES`] frames'
    /// worth per batch) and broadcasts every sealed batch, one at a time, in
    /// id order, with no state lock held across a fan-out. The timer calls it
    /// when a batch is due; a stop calls it too.
    pub(super) fn flush_presence(&self) {
        let _order = self
            .broadcasting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            let batches = {
                let mut state = lock(&self.state);
                state.presence_due = None;
                let audience = state.online.len().max(1);
                state.seal((FLUSH_PUSHES / audience).max(1));
                if !state.pending.is_empty() {
                    // Capped: the rest goes out in the next round, at once.
                    state.presence_due = Some(Instant::now());
                }
                state.in_flight.clone()
            };
            let Some(last) = batches.last().map(|b| b.id) else {
                return;
            };
            for batch in &batches {
                self.delivery.broadcast(batch);
            }
            let mut state = lock(&self.state);
            state.in_flight.retain(|b| b.id > last);
            if state.in_flight.is_empty() && (state.pending.is_empty() || !state.stopping) {
                return;
            }
        }
    }
}
