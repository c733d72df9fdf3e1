//! Plain types and rules: users, presence states and the call state machine.
//!
//! Nothing here touches a socket, a clock, a lock or a log: time arrives as an
//! argument, so every rule is unit-tested without sleeping.

pub mod call;
pub mod limits;
pub mod room;
pub mod user;

pub use call::{Call, CallBook, CallError, CallId, CallPhase, EndReason, Ended};
pub use room::{Room, RoomId, RoomLimits};
pub use user::{
    GUEST_ID_BASE, UserId, UserState, UsernameError, guest_name, validate_secret, validate_username,
};
