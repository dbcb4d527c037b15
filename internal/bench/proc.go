package bench

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"time"
)

// userHZ is the unit of the CPU times in /proc/<pid>/stat: clock ticks of
// USER_HZ, which Linux fixes at 100 for every architecture it exposes to
// user space (sysconf(_SC_CLK_TCK)), whatever the kernel's own HZ.
const userHZ = 100

// ProcCPU returns the CPU time (user plus system) the process pid has used
// so far, from /proc/<pid>/stat; pid 0 means this process. It counts every
// thread of the process but not its children. It fails where /proc is
// absent (not Linux) or the process is gone.
func ProcCPU(pid int) (time.Duration, error) {
	path := "/proc/self/stat"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read the CPU time of process %d: %w", pid, err)
	}
	ticks, err := parseStatCPU(b)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// parseStatCPU returns utime + stime, in clock ticks, from the contents of
// a /proc/<pid>/stat file: fields 14 and 15 (proc(5)). The second field,
// the command name in parentheses, may itself hold spaces and parentheses,
// so the fields are counted from the last ')'.
func parseStatCPU(b []byte) (uint64, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, fmt.Errorf("no command name in %q", truncate(b))
	}
	// After ")": field 3 (state) onwards; utime is field 14, the 12th of these.
	f := bytes.Fields(b[end+1:])
	const utime = 14 - 3
	if len(f) <= utime+1 {
		return 0, fmt.Errorf("%d fields after the command name, want at least %d", len(f), utime+2)
	}
	u, err := strconv.ParseUint(string(f[utime]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	s, err := strconv.ParseUint(string(f[utime+1]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	return u + s, nil
}

func truncate(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

// Process is one OS process whose CPU time a run measures.
type Process struct {
	Name string // rm1, e1, agent1, bench
	Role string // server, etcd, agent or bench
	PID  int    // 0: this process
}

// MachineCPU returns the CPU time all CPUs of the machine have spent busy
// (everything but idle and iowait) since boot, from the "cpu" line of
// /proc/stat. Compared with the processes a run measures, it shows how much
// CPU other work on the machine took meanwhile.
func MachineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read the machine's CPU time: %w", err)
	}
	ticks, err := parseMachineBusy(b)
	if err != nil {
		return 0, fmt.Errorf("/proc/stat: %w", err)
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// parseMachineBusy returns the busy clock ticks of all CPUs from the
// contents of /proc/stat: the sum of the "cpu" line's fields but idle (4th)
// and iowait (5th). Guest time is already counted in user and nice, so the
// guest fields (9th and 10th) are left out.
func parseMachineBusy(b []byte) (uint64, error) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) < 5 || string(f[0]) != "cpu" {
			continue
		}
		var busy uint64
		for i, v := range f[1:min(len(f), 9)] {
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("field %d of the cpu line: %w", i+2, err)
			}
			if i != 3 && i != 4 { // idle, iowait
				busy += n
			}
		}
		return busy, nil
	}
	return 0, fmt.Errorf("no cpu line in %q", truncate(b))
}

// LoadAvg returns the 1-minute load average from /proc/loadavg, or -1 where
// it cannot be read.
func LoadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := bytes.Fields(b)
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(string(f[0]), 64)
	if err != nil {
		return -1
	}
	return v
}

// cpuSample is the CPU time of each process, and the machine's busy time,
// at one moment.
type cpuSample struct {
	at      time.Time
	cpu     map[string]time.Duration // by Process.Name
	machine time.Duration            // MachineCPU; 0 if it could not be read
}

// sampleCPU reads the CPU time of every process. A process that cannot be
// read (it has exited) fails the sample: a CPU figure that silently left a
// process out would be wrong.
func sampleCPU(procs []Process) (cpuSample, error) {
	s := cpuSample{at: time.Now(), cpu: make(map[string]time.Duration, len(procs))}
	for _, p := range procs {
		d, err := ProcCPU(p.PID)
		if err != nil {
			return s, fmt.Errorf("%s: %w", p.Name, err)
		}
		s.cpu[p.Name] = d
	}
	s.machine, _ = MachineCPU() // optional: only OtherCores needs it
	return s, nil
}

// ProcessCPU is the CPU one process used during a measured window.
type ProcessCPU struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// CPUS is the CPU time used in the window, in seconds (user + system).
	CPUS float64 `json:"cpu_s"`
	// Cores is CPUS over the window's length: 1.0 is one core kept busy.
	Cores float64 `json:"cores"`
	// PerJobMS is CPUS per acknowledged submission, in milliseconds.
	PerJobMS float64 `json:"cpu_ms_per_job"`
}

// CPUReport is the CPU every measured process used during a window, and the
// totals by role.
type CPUReport struct {
	WindowS   float64      `json:"window_s"`
	Jobs      int          `json:"jobs"`
	Processes []ProcessCPU `json:"processes"`
	// ByRole sums Processes by role (server, etcd, agent, bench), and "all".
	ByRole map[string]ProcessCPU `json:"by_role"`
	// MachineCores is how many of the machine's cores were busy on average
	// during the window, NumCPU how many it has, and OtherCores the part of
	// MachineCores that no measured process used: other work on the
	// machine, which took CPU from the run (negative values are
	// rounding).
	MachineCores float64 `json:"machine_cores"`
	OtherCores   float64 `json:"other_cores"`
	NumCPU       int     `json:"num_cpu"`
}

// cpuBetween is the CPU each process used between a and b, per job of jobs.
func cpuBetween(procs []Process, a, b cpuSample, jobs int) CPUReport {
	win := b.at.Sub(a.at).Seconds()
	r := CPUReport{WindowS: win, Jobs: jobs, ByRole: map[string]ProcessCPU{}}
	fill := func(p ProcessCPU) ProcessCPU {
		if win > 0 {
			p.Cores = p.CPUS / win
		}
		if jobs > 0 {
			p.PerJobMS = p.CPUS * 1000 / float64(jobs)
		}
		return p
	}
	for _, p := range procs {
		used := (b.cpu[p.Name] - a.cpu[p.Name]).Seconds()
		r.Processes = append(r.Processes, fill(ProcessCPU{Name: p.Name, Role: p.Role, CPUS: used}))
		for _, role := range []string{p.Role, "all"} {
			t := r.ByRole[role]
			t.Name, t.Role, t.CPUS = role, role, t.CPUS+used
			r.ByRole[role] = t
		}
	}
	for role, t := range r.ByRole {
		r.ByRole[role] = fill(t)
	}
	r.NumCPU = runtime.NumCPU()
	if a.machine > 0 && b.machine > 0 && win > 0 {
		r.MachineCores = (b.machine - a.machine).Seconds() / win
		r.OtherCores = r.MachineCores - r.ByRole["all"].Cores
	}
	return r
}

// roles lists the roles present in r, in a fixed order.
func (r CPUReport) roles() []string {
	order := map[string]int{"server": 0, "etcd": 1, "agent": 2, "bench": 3, "all": 4}
	var out []string
	for role := range r.ByRole {
		out = append(out, role)
	}
	sort.Slice(out, func(i, j int) bool { return order[out[i]] < order[out[j]] })
	return out
}
