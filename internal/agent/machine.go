package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// totalMemoryMB returns the machine's memory in MiB, from MemTotal in
// /proc/meminfo.
func totalMemoryMB() (int64, error) {
	return memTotalMB("/proc/meminfo")
}

func memTotalMB(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("%s: unexpected MemTotal line %q", path, sc.Text())
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil || kb <= 0 {
			return 0, fmt.Errorf("%s: unexpected MemTotal line %q", path, sc.Text())
		}
		return kb / 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return 0, fmt.Errorf("%s has no MemTotal line", path)
}

// bootID identifies the running kernel's boot: process IDs and start times
// from another boot mean nothing.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// procStartTime returns when process pid started, in clock ticks since boot
// (field 22 of /proc/<pid>/stat). With the boot ID it tells one process from
// a later one that reuses its PID.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces and parentheses;
	// the fields after the last ')' start with field 3 (state).
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	const startField = 22 - 3
	if len(fields) <= startField {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	return strconv.ParseUint(fields[startField], 10, 64)
}

// killLeftoverGroup kills what is left of the process group of an attempt
// whose leader (pid, started at start) ran under an earlier agent process.
// Pdeathsig killed the leader when that agent died, but not the leader's
// children, which would otherwise keep running while the server retries the
// job elsewhere. The group ID stays reserved while any member lives, so
// kill(-pgid) reaches only that group, unless the group has died out and a
// new process took the number: then it is that process's own group, led by
// a process with a different start time, and is left alone.
func killLeftoverGroup(pgid int, start uint64) error {
	if st, err := procStartTime(pgid); err == nil && st != start {
		return nil // the number belongs to another process now
	}
	err := syscall.Kill(-pgid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil // nothing left
	}
	return err
}
