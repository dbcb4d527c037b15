package schedule

import (
	"archive/zip"
	"bytes"
	_ "embed"
	"fmt"
	"io"
	"math"
	"sync"
	"time"
)

// TZDataVersion is the IANA release of the embedded time zone database.
// Refresh zoneinfo.zip with `go generate` after a Go upgrade and update this.
const TZDataVersion = "2025c"

// zoneinfo.zip is a copy of the Go toolchain's $GOROOT/lib/time/zoneinfo.zip.
// We read zones from this copy only, never from the host: time.LoadLocation
// prefers the system's /usr/share/zoneinfo and uses the time/tzdata package
// only as a fallback, so two servers with different OS packages could compute
// different nominal times for the same schedule. Every server running the same
// tandem binary computes identical times.
//
//go:generate sh -c "cp \"$(go env GOROOT)/lib/time/zoneinfo.zip\" zoneinfo.zip"
//go:embed zoneinfo.zip
var zoneinfoZip []byte

var zones struct {
	once  sync.Once
	files map[string]*zip.File
	err   error

	mu    sync.Mutex
	cache map[string]*time.Location
}

// LoadLocation returns the time zone named name ("America/New_York") from the
// embedded IANA database. "" and "UTC" return time.UTC. "Local" is refused:
// a machine's local zone would make servers disagree.
func LoadLocation(name string) (*time.Location, error) {
	if name == "" || name == "UTC" {
		return time.UTC, nil
	}
	zones.once.Do(func() {
		r, err := zip.NewReader(bytes.NewReader(zoneinfoZip), int64(len(zoneinfoZip)))
		if err != nil {
			zones.err = fmt.Errorf("schedule: embedded zoneinfo.zip: %w", err)
			return
		}
		zones.files = make(map[string]*zip.File, len(r.File))
		for _, f := range r.File {
			zones.files[f.Name] = f
		}
		zones.cache = make(map[string]*time.Location)
	})
	if zones.err != nil {
		return nil, zones.err
	}
	zones.mu.Lock()
	defer zones.mu.Unlock()
	if loc, ok := zones.cache[name]; ok {
		return loc, nil
	}
	f, ok := zones.files[name]
	if !ok {
		return nil, fmt.Errorf("unknown time zone %q: use an IANA name such as \"Europe/Paris\" or \"UTC\"", name)
	}
	rc, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("time zone %q: %w", name, err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("time zone %q: %w", name, err)
	}
	loc, err := time.LoadLocationFromTZData(name, data)
	if err != nil {
		return nil, fmt.Errorf("time zone %q: %w", name, err)
	}
	zones.cache[name] = loc
	return loc, nil
}

// A segment is a stretch of the timeline during which a zone keeps one UTC
// offset: instants in [start, end) (Unix seconds) read as wall clock
// instant+off. Within a segment the wall clock is a bijection of the
// instants; gaps and repeats happen only at segment boundaries.
type segment struct {
	start, end int64 // math.MinInt64 / math.MaxInt64 when unbounded
	off        int64 // seconds east of UTC
}

// segmentAt returns the segment holding instant sec. It does not take
// Location.ZoneBounds at its word: past a zone's last listed transition Go
// derives bounds from the POSIX TZ rule one year at a time, reporting
// boundaries where the offset does not change (the start of a year) and, in a
// leap year, an end that stops a day short and never advances. Boundaries
// with the same offset on both sides are merged here, so a segment's ends are
// real changes of offset.
func segmentAt(loc *time.Location, sec int64) segment {
	off := offsetAt(loc, sec)
	seg := segment{start: math.MinInt64, end: math.MaxInt64, off: off}
	for cur := sec; ; {
		_, e := time.Unix(cur, 0).In(loc).ZoneBounds()
		if e.IsZero() {
			break
		}
		end := e.Unix()
		if end <= cur {
			// The leap-year artefact: the rule has no transition left this
			// year, so the offset holds until the next (UTC) year at least.
			y := time.Unix(cur, 0).UTC().Year()
			end = time.Date(y+1, time.January, 1, 0, 0, 0, 0, time.UTC).Unix()
		}
		if offsetAt(loc, end) != off {
			seg.end = end
			break
		}
		cur = end
	}
	for cur := sec; ; {
		s, _ := time.Unix(cur, 0).In(loc).ZoneBounds()
		if s.IsZero() {
			break
		}
		start := min(s.Unix(), cur)
		if offsetAt(loc, start-1) != off {
			seg.start = start
			break
		}
		cur = start - 1
	}
	return seg
}

func offsetAt(loc *time.Location, sec int64) int64 {
	_, off := time.Unix(sec, 0).In(loc).Zone()
	return int64(off)
}
