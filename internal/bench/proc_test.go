package bench

import (
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// Fields after the name: state ppid pgrp session tty tpgid flags minflt
	// cminflt majflt cmajflt utime stime cutime cstime ...
	tests := []struct {
		name    string
		stat    string
		want    uint64
		wantErr bool
	}{
		{"plain", "1234 (tandem) S 1 1234 1234 0 -1 4194560 2000 0 0 0 150 27 3 4 20 0 12 0 100 0 0", 177, false},
		{"name with spaces and parentheses", "77 (a (b) c) R 1 77 77 0 -1 0 0 0 0 0 9 1 0 0 20 0", 10, false},
		{"children's time is not counted", "5 (x) S 1 5 5 0 -1 0 0 0 0 0 0 0 500 500 20 0", 0, false},
		{"no name", "1234 tandem S 1", 0, true},
		{"too short", "1234 (tandem) S 1 1234 1234 0 -1 4194560 2000 0 0 0 150", 0, true},
		{"not a number", "1234 (tandem) S 1 1234 1234 0 -1 4194560 2000 0 0 0 x 27 3", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %d ticks, want %d", got, tt.want)
			}
		})
	}
}

func TestParseMachineBusy(t *testing.T) {
	stat := "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1 2 3\n"
	got, err := parseMachineBusy([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	// user+nice+system+irq+softirq+steal; not idle, iowait or guest.
	if want := uint64(100 + 5 + 50 + 3 + 2 + 1); got != want {
		t.Errorf("got %d busy ticks, want %d", got, want)
	}
	if _, err := parseMachineBusy([]byte("intr 1 2 3\n")); err == nil {
		t.Error("a /proc/stat without a cpu line parsed")
	}
}

// ProcCPU of this process grows while it burns CPU.
func TestProcCPUOfThisProcess(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc here:", err)
	}
	before, err := ProcCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	if self, err := ProcCPU(os.Getpid()); err != nil || self < before {
		t.Fatalf("ProcCPU(own pid) = %v, %v; want at least %v", self, err, before)
	}
	deadline := time.Now().Add(10 * time.Second)
	x := 1.0
	for time.Now().Before(deadline) {
		for i := 0; i < 1e6; i++ {
			x = math.Sqrt(x + float64(i))
		}
		after, err := ProcCPU(0)
		if err != nil {
			t.Fatal(err)
		}
		if after > before {
			return
		}
	}
	t.Errorf("the CPU time did not grow in 10 s of computing (%v, x=%v)", before, x)
}

func TestProcCPUOfMissingProcess(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc here:", err)
	}
	// PIDs are at most 2^22 on Linux.
	if _, err := ProcCPU(1 << 30); err == nil {
		t.Error("got no error for a process that cannot exist")
	}
}

func TestCPUBetween(t *testing.T) {
	procs := []Process{{Name: "rm1", Role: "server"}, {Name: "rm2", Role: "server"}, {Name: "e1", Role: "etcd"}, {Name: "bench", Role: "bench"}}
	t0 := time.Unix(1000, 0)
	a := cpuSample{at: t0, machine: 10 * time.Second, cpu: map[string]time.Duration{"rm1": time.Second, "rm2": 0, "e1": 5 * time.Second, "bench": 0}}
	b := cpuSample{at: t0.Add(2 * time.Second), machine: 13 * time.Second,
		cpu: map[string]time.Duration{"rm1": 1500 * time.Millisecond, "rm2": 300 * time.Millisecond, "e1": 6 * time.Second, "bench": 200 * time.Millisecond}}
	r := cpuBetween(procs, a, b, 100)
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s: got %v, want %v", what, got, want)
		}
	}
	near("window", r.WindowS, 2)
	if len(r.Processes) != 4 || r.Processes[0].Name != "rm1" {
		t.Fatalf("got processes %+v, want the 4 in order", r.Processes)
	}
	near("rm1 cpu", r.Processes[0].CPUS, 0.5)
	near("rm1 cores", r.Processes[0].Cores, 0.25)
	near("rm1 ms/job", r.Processes[0].PerJobMS, 5)
	near("servers cpu", r.ByRole["server"].CPUS, 0.8)
	near("servers ms/job", r.ByRole["server"].PerJobMS, 8)
	near("etcd cores", r.ByRole["etcd"].Cores, 0.5)
	near("all cpu", r.ByRole["all"].CPUS, 2.0)
	near("machine cores", r.MachineCores, 1.5)
	near("other cores", r.OtherCores, 0.5)
	if got, want := strings.Join(r.roles(), ","), "server,etcd,bench,all"; got != want {
		t.Errorf("roles: got %s, want %s", got, want)
	}

	// No jobs: no division by zero.
	if r := cpuBetween(procs, a, b, 0); r.ByRole["all"].PerJobMS != 0 {
		t.Errorf("with no jobs: got %v ms per job, want 0", r.ByRole["all"].PerJobMS)
	}
}
