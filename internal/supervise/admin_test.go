package supervise

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/supervise/health"
)

// httpService is a service whose command is the test binary as a tiny HTTP
// server on addr (httpHelper), with an http health check of it.
func (c *cluster) httpService(name, addr string) Service {
	c.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		c.t.Fatal(err)
	}
	check, err := health.Parse("http:http://" + addr + "/healthz")
	if err != nil {
		c.t.Fatal(err)
	}
	check.Interval, check.Rise, check.Fall = 50*time.Millisecond, 1, 2
	return Service{Name: name, Command: []string{exe}, Env: map[string]string{helperEnv: "http", helperAddrEnv: addr},
		Health: []health.Check{check}, Fencing: FencingSelf, StopTimeout: Duration(3 * time.Second), StartTimeout: Duration(long)}
}

// get returns the body of GET url ("" if it fails).
func get(url string) string {
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// wantCode fails the test unless err is a tandem error with code whose
// message contains msg.
func wantCode(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	var te *tandem.Error
	if !errors.As(err, &te) || te.Code != code || !strings.Contains(te.Message, msg) {
		t.Errorf("%s: got %v, want a %s error containing %q", what, err, code, msg)
	}
}

// TestAdmin: an operator moves a service to a node that can take it (it
// ends healthy there), is refused a move to a node that cannot, bans the
// owner (it gives the service up cleanly), clears the ban, reads the
// history, and undefines the service (its owner stops it).
func TestAdmin(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	addr := freeAddr(t)
	web := c.httpService("web", addr)
	other := c.service("other", "run")
	a := c.start(c.config("a", web))
	first := c.waitHealthy("web", "a")
	b := c.start(c.config("b", web))
	c.start(c.config("c", web, other)) // one slot: it takes other, as web has an owner
	c.waitHealthy("other", "c")
	c.waitNodes("a", "b", "c")
	ctx, cancel := context.WithTimeout(context.Background(), 4*long) // covers every step below, each of which may wait up to long
	defer cancel()

	for _, tt := range []struct {
		what      string
		err       error
		code, msg string
	}{
		{"move to an unknown node", c.admin.Move(ctx, "web", "zz"), tandem.ENOTFOUND, "no live supervisor on node zz"},
		{"move an unknown service", c.admin.Move(ctx, "nope", "b"), tandem.ENOTFOUND, "no supervised service nope"},
		{"move to its owner", c.admin.Move(ctx, "web", "a"), tandem.ECONFLICT, "service web already runs on a"},
		{"move to a full node", c.admin.Move(ctx, "web", "c"), tandem.ECONFLICT, "node c cannot take web: no free slot (1 of 1 used)"},
		{"move to a node that does not offer it", c.admin.Move(ctx, "other", "a"), tandem.ECONFLICT, "node a cannot take other: does not offer it"},
		{"ban for no time", c.admin.Ban(ctx, "web", "b", 0, ""), tandem.EINVALID, "ban for 0s: must be positive"},
		{"ban a bad node name", c.admin.Ban(ctx, "web", "b b", time.Hour, ""), tandem.EINVALID, `invalid node name "b b"`},
		{"ban from an unknown service", c.admin.Ban(ctx, "nope", "b", time.Hour, ""), tandem.ENOTFOUND, "no supervised service nope"},
		{"undefine an unknown service", c.admin.Undefine(ctx, "nope"), tandem.ENOTFOUND, "no supervised service nope"},
	} {
		wantCode(t, tt.what, tt.err, tt.code, tt.msg)
	}
	_, err := c.admin.Clear(ctx, "")
	wantCode(t, "clear without a service", err, tandem.EINVALID, "name the service")
	_, err = c.admin.Clear(ctx, "nope")
	wantCode(t, "clear an unknown service", err, tandem.ENOTFOUND, "no supervised service nope")

	// Move: a stops web, hands it to b, which starts it.
	if err := c.admin.Move(ctx, "web", "b"); err != nil {
		t.Fatalf("move web to b: %v", err)
	}
	moved := c.waitHealthy("web", "b")
	if got := get("http://" + addr + "/healthz"); got != "ok b "+strconv.FormatInt(moved.Epoch, 10)+"\n" {
		t.Errorf("got %q from web, want b's command at epoch %d", got, moved.Epoch)
	}
	if got := a.procs("web"); len(got) != 0 {
		t.Errorf("a: got processes %v after the move, want none", got)
	}
	if moved.MoveTo != "" {
		t.Errorf("got a pending move to %q after it was done, want none", moved.MoveTo)
	}
	if ev := c.waitEvent("web", moved.Epoch); ev.Cause != CauseMove || ev.PrevNode != "a" || ev.PrevEpoch != first.Epoch || *ev.FencingS != 0 {
		t.Errorf("got event %+v, want cause move from a@%d without fencing", ev, first.Epoch)
	}

	// Ban b: it gives web up cleanly, and a (c is full) takes it.
	if err := c.admin.Ban(ctx, "web", "b", time.Hour, "maintenance"); err != nil {
		t.Fatalf("ban b from web: %v", err)
	}
	back := c.waitHealthy("web", "a")
	if len(back.Bans) != 1 || back.Bans[0].Node != "b" || back.Bans[0].Reason != "maintenance" {
		t.Errorf("got bans %+v, want b's for maintenance", back.Bans)
	}
	if got := b.procs("web"); len(got) != 0 {
		t.Errorf("b: got processes %v after its ban, want none", got)
	}
	if ev := c.waitEvent("web", back.Epoch); ev.Cause != CauseBanned || ev.PrevNode != "b" || *ev.FencingS != 0 {
		t.Errorf("got event %+v, want cause banned from b without fencing", ev)
	}
	wantCode(t, "move to a banned node", c.admin.Move(ctx, "web", "b"), tandem.ECONFLICT, "node b cannot take web: banned until")
	if n, err := c.admin.Clear(ctx, "web"); n != 1 || err != nil {
		t.Errorf("clear web: got %d, %v, want 1 ban cleared", n, err)
	}
	if st := c.status("web"); len(st.Bans) != 0 || st.Node != "a" {
		t.Errorf("after clear: got %+v, want no bans and web still on a (no fail-back)", st)
	}

	// The history: each takeover with its cause and the duration of its
	// phases.
	evs := c.events("web")
	var causes []string
	for i, ev := range evs {
		causes = append(causes, ev.Cause)
		if ev.StartS == nil || ev.HealthyS == nil || ev.FencingS == nil || ev.Time.IsZero() {
			t.Errorf("event %d: got %+v, want start, healthy and fencing durations and a time", i, ev)
		}
		if i > 0 && (ev.Epoch <= evs[i-1].Epoch || ev.ElectionS == nil) {
			t.Errorf("event %d: got %+v, want a newer epoch than %d and an election duration", i, ev, evs[i-1].Epoch)
		}
	}
	if want := []string{tandem.CauseInitial, CauseMove, CauseBanned}; strings.Join(causes, " ") != strings.Join(want, " ") {
		t.Errorf("got causes %v, want %v", causes, want)
	}
	all, err := c.admin.History(ctx, "")
	if err != nil || len(all) != len(evs)+1 {
		t.Errorf("history of every service: got %d events (%v), want web's %d and other's 1", len(all), err, len(evs))
	}

	// Undefine: a stops web, and nobody takes it.
	if err := c.admin.Undefine(ctx, "web"); err != nil {
		t.Fatalf("undefine web: %v", err)
	}
	waitFor(t, "a to give web up", long, func() bool { return c.owner("web") == nil })
	if r := c.resignation("web"); r == nil || r.Reason != CauseUndefined || r.From != "a" {
		t.Errorf("got resignation %+v, want a's for undefined", r)
	}
	if got := a.procs("web"); len(got) != 0 {
		t.Errorf("a: got processes %v after undefine, want none", got)
	}
	if st := c.status("web"); st.Service != "" {
		t.Errorf("got status %+v of an undefined service, want none", st)
	}
}
