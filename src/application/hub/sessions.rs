//! Sessions: login and takeover, guests, RESUME and held calls, logout,
//! disconnects and the operator's end of a session.

use super::*;
use crate::application::store::IdKind;

impl Hub {
    /// Makes `user` online on `conn`. An older session of the same user is ended
    /// (its connection is told and closed, its call ends).
    ///
    /// # Errors
    /// `Unavailable` while the server is shutting down; `Unauthorized` if the
    /// account was deleted since the credentials were checked.
    pub fn login(
        &self,
        conn: ConnId,
        user: &UserRecord,
        kind: SessionKind,
    ) -> Result<(), AppError> {
        let state = self.lock_for_login(user.id)?;
        self.login_locked(state, conn, user, kind);
        Ok(())
    }

    pub(super) fn login_locked(
        &self,
        mut state: MutexGuard<'_, HubState>,
        conn: ConnId,
        user: &UserRecord,
        kind: SessionKind,
    ) {
        let username: Arc<str> = Arc::from(user.username.as_str());
        let mut out = Outgoing::default();
        let mut touched = vec![(user.id, username.clone())];
        if let Some(call) = state.calls.call_of(user.id) {
            let peer = call.peer_of(user.id);
            touched.push((peer, state.party(peer).username));
        }
        let before = Before::take(&state, &touched);
        if let Some(old) = state.online.get(&user.id).map(|s| s.conn) {
            info!(
                "session taken over user_id={} username={} old_conn={} new_conn={}",
                user.id, user.username, old, conn
            );
            self.leave(&mut state, user.id, Departure::TakenOver, &mut out);
            out.end.push((old, SessionEnd::TakenOver));
        }
        state.insert_session(
            user.id,
            Session {
                conn,
                username,
                kind,
                detached: None,
            },
        );
        self.delivery.attach(user.id, conn);
        self.commit(state, before, out);
    }

    /// Fails unless `conn` holds `user`'s current session (it may have been
    /// taken over, or the account deleted, since the connection logged in).
    ///
    /// # Errors
    /// `LoginRequired`.
    pub fn check_session(&self, conn: ConnId, user: UserId) -> Result<(), AppError> {
        lock(&self.state).check_session(conn, user)
    }

    /// GUEST_LOGIN: a new guest identity, online on `conn` until `until`.
    /// Returns the guest's record (id and shown name; no password).
    ///
    /// # Errors
    /// `Unavailable` while the server is shutting down; `Conflict` if an
    /// online guest already has the name.
    pub fn guest_login(
        &self,
        conn: ConnId,
        name: String,
        until: Instant,
        v2: bool,
    ) -> Result<UserRecord, AppError> {
        // From the store, never reused after a restart (a cluster's store
        // hands them out across nodes).
        let id = self.rooms_ids().next(IdKind::Guest).map_err(|err| {
            log::warn!("no guest id: {err}");
            AppError::Internal("could not reserve a guest id; try again".into())
        })?;
        let id = UserId(id);
        let guest = UserRecord {
            id,
            username: name,
            password_hash: String::new(),
            created_at: 0,
        };
        let kind = SessionKind {
            v2,
            resumable: false,
            guest_until: Some(until),
        };
        let state = self.lock_for_login(id)?;
        let taken = state.guests.iter().any(|id| {
            state
                .online
                .get(id)
                .is_some_and(|s| s.username.eq_ignore_ascii_case(&guest.username))
        });
        if taken {
            return Err(AppError::Conflict(
                "another guest is using that name; choose another display_name".into(),
            ));
        }
        self.login_locked(state, conn, &guest, kind);
        self.timer_wake.notify_one();
        Metrics::count(&self.metrics.guest_logins);
        Ok(guest)
    }

    /// The state lock for a login of `user`: refused while stopping, and for a
    /// registered user only while the account exists. Checked under the lock so
    /// that a deletion (storage first, then [`Hub::end_user`]) cannot miss a
    /// login racing it.
    pub(super) fn lock_for_login(
        &self,
        user: UserId,
    ) -> Result<MutexGuard<'_, HubState>, AppError> {
        let state = lock(&self.state);
        if state.stopping {
            return Err(AppError::Unavailable("server shutting down".into()));
        }
        if !user.is_guest() && self.users.find_by_id(user).is_none() {
            return Err(AppError::Unauthorized("the account was deleted".into()));
        }
        Ok(state)
    }

    /// RESUME: like [`Hub::login`], but a held call goes on. If the session is
    /// detached it is reattached and what was held is delivered first, in
    /// order; if it is still attached to another connection (which the client
    /// gave up on before the server noticed), that connection is closed and
    /// the call moves here.
    ///
    /// # Errors
    /// As [`Hub::login`].
    pub fn resume(
        &self,
        conn: ConnId,
        user: &UserRecord,
        kind: SessionKind,
    ) -> Result<Resumed, AppError> {
        let mut state = self.lock_for_login(user.id)?;
        // What to go on with: the user's call and rooms, unless the hold overflowed.
        let call = state.calls.call_of(user.id).copied();
        let rooms = state.rooms.rooms_of(user.id);
        let session = state
            .online
            .get_mut(&user.id)
            .filter(|s| !s.detached.as_ref().is_some_and(|gap| gap.overflowed));
        let Some(session) = session.filter(|_| call.is_some() || !rooms.is_empty()) else {
            self.login_locked(state, conn, user, kind);
            return Ok(Resumed::default());
        };
        let mut out = Outgoing::default();
        let old_conn = std::mem::replace(&mut session.conn, conn);
        session.kind = kind;
        let held = session.detached.take();
        let call_text = call.map_or_else(|| "-".to_string(), |c| c.id.to_string());
        match held {
            Some(gap) => {
                state.deadlines.remove(&(gap.until, user.id));
                self.delivery.attach(user.id, conn);
                info!(
                    "session resumed user_id={} conn={} call_id={} rooms={} held_frames={}",
                    user.id,
                    conn,
                    call_text,
                    rooms.len(),
                    gap.notices.len()
                );
                // Delivered under the state lock: relays from the peer, which
                // need it to find this session, must not overtake what was held.
                self.delivery.catch_up(user.id, &state.in_flight);
                for notice in gap.notices {
                    self.delivery.to_user(user.id, notice);
                }
                if let Some(call) = call {
                    let peer = call.peer_of(user.id);
                    let reconnected = Notice::PeerStatus {
                        call_id: call.id,
                        peer: state.party(user.id),
                        reconnecting: false,
                        grace_ms: 0,
                    };
                    if state.online.get(&peer).is_some_and(|s| s.kind.v2) {
                        state.tell(peer, reconnected, &mut out, &self.hold);
                    }
                }
                self.room_peer_status(&mut state, user.id, false, &mut out);
            }
            None => {
                info!(
                    "session resumed over a live connection user_id={} old_conn={} new_conn={} call_id={} rooms={}",
                    user.id,
                    old_conn,
                    conn,
                    call_text,
                    rooms.len()
                );
                self.delivery.attach(user.id, conn);
                out.end.push((old_conn, SessionEnd::TakenOver));
            }
        }
        self.commit(state, Before(Vec::new()), out);
        Ok(Resumed {
            call: call.map(|c| c.id),
            rooms,
        })
    }

    /// Ends `user`'s session on `conn` (LOGOUT). Their call ends.
    ///
    /// # Errors
    /// `LoginRequired` if `conn` does not hold the user's session.
    pub fn logout(&self, conn: ConnId, user: UserId) -> Result<(), AppError> {
        let state = lock(&self.state);
        state.check_session(conn, user)?;
        self.remove_session(state, user, Departure::LoggedOut);
        Ok(())
    }

    /// Ends whatever session `user` has (account deleted, guest expired, an
    /// operator's kick); its connection, unless it is `except`, is told why and
    /// closed. Returns whether there was a session to end.
    pub fn end_user(&self, user: UserId, why: SessionEnd, except: Option<ConnId>) -> bool {
        let mut state = lock(&self.state);
        let Some(session) = state.online.get(&user) else {
            return false;
        };
        let conn = session.conn;
        let attached = session.detached.is_none();
        let mut out = Outgoing::default();
        if attached && Some(conn) != except {
            out.end.push((conn, why));
        }
        let before = self.before_leaving(&state, user);
        self.leave(&mut state, user, Departure::Ended(why), &mut out);
        self.commit(state, before, out);
        true
    }

    /// Clean-up when a connection closes. A no-op if `conn` no longer holds the
    /// session (it was taken over, or the user logged out). A resumable session
    /// in a call or a room is held for the grace period instead of ended.
    pub fn disconnect(&self, conn: ConnId, user: UserId) {
        let mut state = lock(&self.state);
        if state.check_session(conn, user).is_err() {
            return;
        }
        let call = state.calls.call_of(user).copied();
        let in_rooms = state.rooms.is_in_any(user);
        let resumable = state.online.get(&user).is_some_and(|s| s.kind.resumable);
        let hold = resumable
            && (call.is_some() || in_rooms)
            && !state.stopping
            && !self.hold.grace.is_zero();
        if !hold {
            // A connection closed by the shutdown is the server's doing.
            let why = if state.stopping {
                Departure::Ended(SessionEnd::ShuttingDown)
            } else {
                Departure::Disconnected
            };
            self.remove_session(state, user, why);
            return;
        }
        let until = Instant::now() + self.hold.grace;
        // Nothing is routed to the closed connection: the gap keeps it instead.
        self.delivery.detach(user, conn);
        if let Some(session) = state.online.get_mut(&user) {
            session.detached = Some(Gap {
                until,
                notices: Vec::new(),
                bytes: 0,
                overflowed: false,
            });
        }
        state.deadlines.insert((until, user));
        self.timer_wake.notify_one();
        Metrics::count(&self.metrics.calls_held);
        info!(
            "session held for a resume user_id={} call_id={} in_rooms={} grace_ms={}",
            user,
            call.map_or_else(|| "-".to_string(), |c| c.id.to_string()),
            in_rooms,
            self.hold.grace.as_millis()
        );
        let mut out = Outgoing::default();
        if let Some(call) = call {
            let peer = call.peer_of(user);
            if state.online.get(&peer).is_some_and(|s| s.kind.v2) {
                let notice = Notice::PeerStatus {
                    call_id: call.id,
                    peer: state.party(user),
                    reconnecting: true,
                    grace_ms: self.hold.grace.as_millis() as u64,
                };
                state.tell(peer, notice, &mut out, &self.hold);
            }
        }
        self.room_peer_status(&mut state, user, true, &mut out);
        self.commit(state, Before(Vec::new()), out);
    }

    /// The presence of `user` and their peer, before `user` leaves.
    pub(super) fn before_leaving(&self, state: &HubState, user: UserId) -> Before {
        let mut touched = vec![(user, state.party(user).username)];
        if let Some(call) = state.calls.call_of(user) {
            let peer = call.peer_of(user);
            touched.push((peer, state.party(peer).username));
        }
        Before::take(state, &touched)
    }

    pub(super) fn remove_session(
        &self,
        mut state: MutexGuard<'_, HubState>,
        user: UserId,
        why: Departure,
    ) {
        let before = self.before_leaving(&state, user);
        let mut out = Outgoing::default();
        self.leave(&mut state, user, why, &mut out);
        self.commit(state, before, out);
    }

    /// Whether a guest with this display name (its guest name) may be created:
    /// no registered user has the display name.
    pub fn guest_name_free(&self, display_name: &str) -> bool {
        self.users
            .find_by_name(&username_key(display_name))
            .is_none()
    }
}
