// Package schedule is the pure core of fenced schedules: the schedule spec
// and its validation, the sequence of nominal times, deterministic jitter,
// and Plan, which decides what happens to each nominal time. It does no I/O
// and reads no clock: the controller passes the stored cursor and its local
// clock in, and commits Plan's decisions with the new cursor in one fenced
// transaction (DESIGN.md I1, I7). Every function here is a pure function of
// its arguments, so a new owner reaches the same decisions as the old one.
//
// # Nominal times
//
// A schedule's nominal times are instants. They come from Every or Cron
// (exactly one), bounded by Start and End (both inclusive).
//
// Every: the instants Anchor + k*Every, k any integer, in absolute time (DST
// has no effect). Anchor defaults to DefaultAnchor (2000-01-01T00:00:00Z), so
// every server computes the same grid. Every is at least one second.
//
// Cron: one or more expressions, each with the five standard fields
// (minute hour day-of-month month day-of-week, parsed by robfig/cron/v3,
// with names such as "mon" and "jan", ranges, lists, steps, and "?") or a
// descriptor (@yearly, @annually, @monthly, @weekly, @daily, @midnight,
// @hourly). There is no seconds field: six fields are refused (use Every for
// sub-minute schedules), and so are @every and a TZ= prefix (use the every
// and tz fields). Day-of-week is 0-6 (Sunday is 0; 7 is refused). When both
// day fields are restricted (neither is "*"), a day matches if either does,
// as in Vixie cron. The schedule's times are the union of its expressions'
// times; several wall times that land on the same instant are one nominal
// time.
//
// An expression gives wall-clock times (whole minutes) in the zone TZ. The
// instants are computed here, not by robfig/cron's Next (which loses or
// doubles times around DST changes), from the parsed fields and the zone's
// transitions. A wall time that occurs once fires at that instant. A wall time that a
// zone shift skips (the spring-forward gap) or repeats (the autumn overlap)
// fires according to the kind of expression:
//
//	              wall time in a gap               wall time repeated
//	fixed-hour    fires once, at the first         fires once, at its first
//	              instant after the gap            occurrence
//	hourly        does not fire                    fires at both occurrences
//
// An expression is hourly when its hour field matches all 24 hours, however
// written ("*", "0-23", "*/1"): "*/15 * * * *", "0 * * * *", "@hourly".
// Every other expression is fixed-hour: "30 2 * * *", "*/15 2 * * *",
// "0 */2 * * *", "@daily". The decision rests on the parsed field, never on
// its spelling. In America/New_York (gap 02:00-03:00 in March, overlap
// 01:00-02:00 in November):
//
//	"30 2 * * *"    fires at 03:00 EDT on the day of the gap
//	"*/15 2 * * *"  fires once at 03:00 EDT that day (02:00..02:45 all land there)
//	"30 1 * * *"    fires at 01:30 EDT, not again at 01:30 EST
//	"0 * * * *"     01:00 EST, then 03:00 EDT (02:00 does not exist);
//	                in November 01:00 EDT and 01:00 EST, an hour apart
//
// So a fixed-hour time of day happens once on every day it matches, and an
// hourly expression keeps pace with real time, as cron's wildcard jobs do.
//
// Zones with midnight transitions (America/Santiago, Africa/Cairo,
// Asia/Beirut) and half-hour shifts (Australia/Lord_Howe) follow the same
// rules. A nominal time that does not exist is not a nominal time: it needs
// no record (I7 counts the times Next returns).
//
// Zones come from the IANA database embedded in this package (see
// TZDataVersion and LoadLocation), never from the host, so every server
// running the same binary computes identical times.
//
// Next(after) returns the first nominal time strictly after after. Successive
// times strictly increase. An expression that matches no date in the 400-year
// Gregorian cycle (after which dates and weekdays repeat) never fires and is
// refused ("0 0 30 2 *"); so is a spec with no nominal time between Start and
// End.
//
// # Jitter
//
// With Jitter set, nominal time T is due at T + J(T), where J(T) is the first
// 8 bytes of SHA-256(id "\n" T in RFC 3339 UTC with nanoseconds), read
// big-endian, modulo min(Jitter, Next(T) - T) in nanoseconds. It is the same
// on every server, less than Jitter, and less than the distance to the next
// nominal time, so due times keep the order of nominal times. Validation
// refuses a Jitter not shorter than the schedule's period (Every, or the
// shortest wall-clock distance between two cron times). The nominal time,
// not the due time, names the run and its record.
//
// # Decisions
//
// Plan decides, from the stored cursor (the last nominal time with a record),
// the local clock, and the live runs and buffered times, the outcome of each
// due nominal time after the cursor: fire, skip (reason paused, overlap or
// catchup), buffer, or replace (kill the live runs, then fire). Every nominal
// time gets exactly one decision (a run of skips may share one decision
// covering Nominal..Through); nothing is decided before it is due by the
// local clock; a time less than the grace period late is never a catch-up,
// so a failover is never a misfire. Clocks decide only lateness (I5): what
// has been handled is the cursor's business. See Plan for the exact rules.
//
// Defaults: overlap skip, catch-up latest with no window (catchup_max applies
// to catch-up all only; 0 means no cap), grace DefaultGrace (one minute, a
// controller setting), at most MaxBuffered buffered times, tz UTC.
package schedule
