package bench

import (
	"strings"
	"testing"
	"time"
)

func lbReqAt(t0 time.Time, ms int, id, state string, status int) lbReq {
	start := t0.Add(time.Duration(ms) * time.Millisecond)
	return lbReq{start: start, end: start.Add(time.Millisecond), status: status, id: id, state: state}
}

func TestInARow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var reqs []lbReq
	for i := 0; i < 5; i++ {
		reqs = append(reqs, lbReqAt(t0, i, "rm2", "active", 200))
	}
	reqs = append(reqs, lbReqAt(t0, 5, "rm1", "standby", 200))
	for i := 6; i < 9; i++ {
		reqs = append(reqs, lbReqAt(t0, i, "rm2", "active", 200))
	}
	if _, ok := inARow(reqs, t0, "rm2", 6); ok {
		t.Fatal("a standby answer in between must break the run")
	}
	end, ok := inARow(reqs, t0, "rm2", 5)
	if !ok || !end.Equal(t0.Add(5*time.Millisecond)) {
		t.Fatalf("inARow = %v, %v; want the end of the fifth", end, ok)
	}
	if _, ok := inARow(reqs, t0.Add(time.Millisecond), "rm2", 5); ok {
		t.Fatal("requests before since must not count")
	}
}

func TestMeasureLB(t *testing.T) {
	t0 := time.Unix(1000, 0)
	change := t0.Add(10 * time.Millisecond)
	reqs := []lbReq{
		lbReqAt(t0, 0, "rm1", "active", 200),
		lbReqAt(t0, 12, "rm1", "standby", 200), // old active after the change: wrong, old last
		lbReqAt(t0, 14, "", "", 502),           // error
		{start: t0.Add(16 * time.Millisecond), err: "connection refused"},
		lbReqAt(t0, 18, "rm2", "active", 200), // moved
		lbReqAt(t0, 20, "rm2", "active", 200),
		lbReqAt(t0, 40, "rm1", "standby", 200), // after the end: not counted in the window
	}
	m := measureLB(reqs, change, t0.Add(30*time.Millisecond), "rm1", "rm2")
	if m.wrong != 1 || m.errors != 2 || m.requests != 5 {
		t.Errorf("wrong %d, errors %d, requests %d; want 1, 2, 5", m.wrong, m.errors, m.requests)
	}
	if m.moved != 9*time.Millisecond {
		t.Errorf("moved %s, want 9ms", m.moved)
	}
	if m.oldLast != 30*time.Millisecond {
		t.Errorf("old last %s, want 30ms (the last request rm1 answered)", m.oldLast)
	}
}

func TestHAProxyChecksConfig(t *testing.T) {
	got := haproxyChecksConfig("127.0.0.1:9000", []string{"127.0.0.1:1", "127.0.0.1:2"}, "inter 100ms fall 2 rise 1")
	for _, want := range []string{"bind 127.0.0.1:9000", "option httpchk GET /isActive", "http-check expect status 200",
		"default-server inter 100ms fall 2 rise 1", "server rm1 127.0.0.1:1 check", "server rm2 127.0.0.1:2 check"} {
		if !strings.Contains(got, want) {
			t.Errorf("config lacks %q:\n%s", want, got)
		}
	}
}

func TestLBConfigValidate(t *testing.T) {
	c := LBConfig{Trials: 1}
	if err := c.validate(); err != nil || len(c.Modes) != len(LBModes) || len(c.Events) != len(LBEvents) {
		t.Fatalf("defaults: %v, %v, %v", err, c.Modes, c.Events)
	}
	for _, bad := range []LBConfig{{Trials: 0}, {Trials: 1, Modes: []string{"envoy"}}, {Trials: 1, Events: []string{"reboot"}}} {
		if err := bad.validate(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
