package archive_test

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/archive"
)

func lines(from, n int) []archive.Line {
	var out []archive.Line
	for i := from; i < from+n; i++ {
		rec, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("j%03d", i), "state": "succeeded"})
		out = append(out, archive.Line{Kind: "jobs", ID: fmt.Sprintf("j%03d", i),
			RemovedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Reason: "retention", Record: rec})
	}
	return out
}

func ids(ls []archive.Line) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.ID)
	}
	return out
}

// What Append wrote reads back the same, across rotations by size, and a
// whole file is one gzip stream that zcat (gzip.Reader) reads.
func TestAppendReadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	w, err := archive.Open(dir, "rm1")
	if err != nil {
		t.Fatal(err)
	}
	w.SetMaxBytes(300) // a few members per file
	var want []archive.Line
	for b := 0; b < 10; b++ {
		ls := lines(b*5, 5)
		if err := w.Append(ls); err != nil {
			t.Fatalf("append batch %d: %v", b, err)
		}
		want = append(want, ls...)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := archive.Read(dir)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if fmt.Sprint(ids(got)) != fmt.Sprint(ids(want)) {
		t.Fatalf("got IDs %v, want %v", ids(got), ids(want))
	}
	for i := range got {
		if string(got[i].Record) != string(want[i].Record) || !got[i].RemovedAt.Equal(want[i].RemovedAt) || got[i].Kind != "jobs" || got[i].Reason != "retention" {
			t.Fatalf("line %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	files, err := archive.Files(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("got %d files, want a rotation by size (several)", len(files))
	}
	f, err := os.Open(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f) // multistream by default, like zcat
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(zr); err != nil {
		t.Fatalf("the file is not one valid gzip stream: %v", err)
	}
}

// A torn member at the end of a file (a crash in the middle of an Append)
// loses only itself; a new Writer never appends after it.
func TestTornEndIsSkipped(t *testing.T) {
	dir := t.TempDir()
	w, err := archive.Open(dir, "rm1")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Append(lines(0, 3)); err != nil {
		t.Fatal(err)
	}
	if err := w.Append(lines(3, 3)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	files, _ := archive.Files(dir)
	if len(files) != 1 {
		t.Fatalf("got %d files, want 1", len(files))
	}
	// Tear the second member: keep its first bytes only.
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	first := memberLen(t, data)
	if err := os.WriteFile(files[0], data[:first+(len(data)-first)/2], 0o640); err != nil {
		t.Fatal(err)
	}
	w2, err := archive.Open(dir, "rm1")
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.Append(lines(3, 3)); err != nil { // the crashed batch, archived again
		t.Fatal(err)
	}
	w2.Close()
	got, err := archive.Read(dir)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if want := "[j000 j001 j002 j003 j004 j005]"; fmt.Sprint(ids(got)) != want {
		t.Fatalf("got IDs %v, want %s", ids(got), want)
	}
	if files, _ := archive.Files(dir); len(files) != 2 {
		t.Fatalf("got %d files, want 2 (a new writer starts its own file)", len(files))
	}
}

// memberLen returns the length of the first gzip member of data.
func memberLen(t *testing.T, data []byte) int {
	t.Helper()
	r := &countingReader{data: data}
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatal(err)
	}
	zr.Multistream(false)
	if _, err := io.ReadAll(zr); err != nil {
		t.Fatal(err)
	}
	return r.off
}

// countingReader is a byte reader (so gzip reads no further than a member).
type countingReader struct {
	data []byte
	off  int
}

func (r *countingReader) Read(p []byte) (int, error) {
	if r.off >= len(r.data) {
		return 0, io.EOF
	}
	n := copy(p, r.data[r.off:])
	r.off += n
	return n, nil
}

func (r *countingReader) ReadByte() (byte, error) {
	if r.off >= len(r.data) {
		return 0, io.EOF
	}
	b := r.data[r.off]
	r.off++
	return b, nil
}
