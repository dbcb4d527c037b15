// Package archive keeps the records retention removes from etcd, for those
// who want history kept (tandem server --archive-dir): compressed JSON
// lines in a directory.
//
// Each Append writes its records as one gzip member appended to the current
// file and syncs it to disk before returning, so a caller that deletes a
// record only after Append returned never loses it. A crash between the two
// leaves the record archived but not deleted, so the next removal archives
// it again: a record may appear more than once (the last line for an ID is
// the latest version), never not at all.
//
// Files are named <server>-<UTC start time>.jsonl.gz and rotate every UTC
// day and at MaxBytes; a process never appends to a file an earlier one
// wrote (a crash may have left a torn member at its end). Concatenated gzip
// members are one valid gzip stream: zcat and gzip.Reader read a whole file.
package archive

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultMaxBytes is the size at which a file is rotated.
const DefaultMaxBytes = 256 << 20

// Line is one archived record: its kind (jobs, workflows), ID, when it was
// removed and why, and the record as it was stored.
type Line struct {
	Kind      string          `json:"kind"`
	ID        string          `json:"id"`
	RemovedAt time.Time       `json:"removed_at"`
	Reason    string          `json:"reason"`
	Record    json.RawMessage `json:"record"`
}

// Writer appends lines to the files of one directory. It is safe for
// concurrent use.
type Writer struct {
	dir      string
	prefix   string
	maxBytes int64
	now      func() time.Time

	mu   sync.Mutex
	f    *os.File
	day  string // UTC date of the current file
	size int64
}

// Open returns a Writer into dir (created if absent), naming its files
// after server.
func Open(dir, server string) (*Writer, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	return &Writer{dir: dir, prefix: server, maxBytes: DefaultMaxBytes, now: time.Now}, nil
}

// SetMaxBytes sets the size at which a file is rotated (tests).
func (w *Writer) SetMaxBytes(n int64) { w.mu.Lock(); w.maxBytes = n; w.mu.Unlock() }

// Append writes lines as one gzip member and syncs the file. When it
// returns nil the lines are on disk; on error, some may be (a torn member
// at the end of the file, which Read skips) and the file is closed, so
// the next Append starts a new one.
func (w *Writer) Append(lines []Line) error {
	if len(lines) == 0 {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now().UTC()
	if err := w.rotate(now); err != nil {
		return err
	}
	bw := bufio.NewWriter(w.f)
	zw := gzip.NewWriter(bw)
	enc := json.NewEncoder(zw)
	var err error
	for i := range lines {
		if err = enc.Encode(&lines[i]); err != nil {
			break
		}
	}
	if err == nil {
		err = zw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = w.f.Sync()
	}
	if err == nil {
		var fi os.FileInfo
		if fi, err = w.f.Stat(); err == nil {
			w.size = fi.Size()
		}
	}
	if err != nil {
		w.f.Close()
		w.f = nil
		return fmt.Errorf("archive: append %d records: %w", len(lines), err)
	}
	return nil
}

// rotate opens a new file if there is none, the day changed or the file
// is full.
func (w *Writer) rotate(now time.Time) error {
	day := now.Format("2006-01-02")
	if w.f != nil && w.day == day && w.size < w.maxBytes {
		return nil
	}
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
	name := filepath.Join(w.dir, fmt.Sprintf("%s-%s.jsonl.gz", w.prefix, now.Format("20060102T150405.000000000Z")))
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := syncDir(w.dir); err != nil { // the new name survives a crash too
		f.Close()
		return err
	}
	w.f, w.day, w.size = f, day, 0
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("archive: sync %s: %w", dir, err)
	}
	return nil
}

// Close closes the current file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// Files returns the archive files in dir, oldest first by name.
func Files(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".jsonl.gz") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// Read returns every line of the archive files in dir, file by file. A torn
// member at the end of a file (a crash in the middle of an Append, whose
// records were therefore not deleted) is skipped.
func Read(dir string) ([]Line, error) {
	files, err := Files(dir)
	if err != nil {
		return nil, err
	}
	var out []Line
	for _, name := range files {
		lines, err := readFile(name)
		if err != nil {
			return out, err
		}
		out = append(out, lines...)
	}
	return out, nil
}

func readFile(name string) ([]Line, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var out []Line
	for {
		if _, err := br.Peek(1); err == io.EOF {
			return out, nil
		}
		// One member at a time: a torn last member loses only itself.
		zr, err := gzip.NewReader(br)
		if err != nil {
			return out, nil // a torn header at the end
		}
		zr.Multistream(false)
		var member []Line
		dec := json.NewDecoder(zr)
		for {
			var l Line
			err := dec.Decode(&l)
			if err == io.EOF {
				break
			}
			if err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, gzip.ErrChecksum) {
					return out, nil // the torn end of the file
				}
				return out, fmt.Errorf("archive: %s: %w", name, err)
			}
			member = append(member, l)
		}
		out = append(out, member...)
	}
}
