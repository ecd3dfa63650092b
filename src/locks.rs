//! The log's own locks: advisory lock tags that no SQL function can make,
//! so no application's `pg_advisory_lock` ever takes or blocks one. Every
//! tag is built here, from one list of kinds, so two kinds cannot collide
//! (chain 0's tile lock once shared the linkers' tag).
//!
//! A tag is (database, "aulg", object, kind): `pg_locks` shows the object
//! as `objid` and the kind as `objsubid`. `pg_advisory_lock(bigint)` uses
//! kind 1 and `(int, int)` kind 2.

use pgrx::pg_sys;

/// "aulg": tells our locks apart in pg_locks.
const KEY: u32 = 0x6175_6c67;

#[derive(Clone, Copy, Debug)]
pub enum LogLock {
    /// Linking into a chain (held through the commit's WAL flush).
    Chain(i32),
    /// `purge()` (exclusive) against everything that reads the log's
    /// oldest records (share).
    Purge,
    /// One linker of committed prepared transactions at a time.
    Linkers,
    /// Integrating one chain's Merkle tiles.
    Tiles(i32),
}

impl LogLock {
    /// (objid, objsubid) in pg_locks.
    fn object_and_kind(self) -> (u32, u16) {
        match self {
            LogLock::Chain(c) => (c as u32, 0xA1),
            LogLock::Purge => (0, 0xA2),
            LogLock::Linkers => (0, 0xA3),
            LogLock::Tiles(c) => (c as u32, 0xA4),
        }
    }

    /// Take the lock in `mode` until the transaction ends; with `wait`
    /// off, false if another holds a conflicting one. A transaction that
    /// holds one of these cannot be prepared (proof::may_prepare).
    pub fn acquire(self, mode: u32, wait: bool) -> bool {
        let (object, kind) = self.object_and_kind();
        let tag = pg_sys::LOCKTAG {
            // SAFETY: MyDatabaseId is set in any backend that runs a transaction.
            locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            locktag_field2: KEY,
            locktag_field3: object,
            locktag_field4: kind,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        };
        // SAFETY: a transaction-level lock, released at commit or abort.
        let r = unsafe { pg_sys::LockAcquire(&tag, mode as i32, false, !wait) };
        let got = r != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL;
        if got {
            crate::proof::note_log_work();
        }
        got
    }
}
