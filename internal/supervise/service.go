package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/supervise/health"
	"github.com/tandemhq/tandem/internal/supervise/hook"
	"github.com/tandemhq/tandem/internal/supervise/vip"
)

// Fencing modes.
const (
	// FencingStrict: a new owner runs the fence hooks whenever the last
	// node that ran the command did not stop it cleanly, and starts nothing
	// until one level of them succeeds. Safety rests on the hooks.
	FencingStrict = "strict"
	// FencingSelf: a new owner trusts the last one to have killed its own
	// command before its lease could expire (self-fencing). Safety rests on
	// timing: it fails if the whole old node freezes past its lease.
	FencingSelf = "self"
)

// Service is a supervised service, as defined in etcd: what to run, how to
// check, fence and reach it, and where it may run. Every node that hosts it
// reads this same definition when it takes the service over.
type Service struct {
	Name    string            `json:"name"`
	Command []string          `json:"command"`
	Dir     string            `json:"dir,omitempty"`
	Env     map[string]string `json:"env,omitempty"`

	Health       []health.Check `json:"health,omitempty"`
	StartTimeout Duration       `json:"start_timeout"`
	StopTimeout  Duration       `json:"stop_timeout"`
	// KillMode is whom a stop signals first: KillControlGroup (every
	// process of the command's cgroup, the default) or KillMixed (the main
	// process alone, for a daemon that stops its children gracefully); the
	// kill after StopTimeout takes every process either way.
	KillMode string `json:"kill_mode,omitempty"`
	// Restarts in place are allowed within RestartWindow; one more failure
	// and the node gives the service up (health-failed) and is banned.
	Restarts      int      `json:"restarts"`
	RestartWindow Duration `json:"restart_window"`
	Ban           Duration `json:"ban"`

	Fencing string      `json:"fencing"`
	Fence   []FenceHook `json:"fence,omitempty"`
	Hooks   Hooks       `json:"hooks,omitempty"`
	// HookTimeout bounds every hook but the fence hooks, which have their own.
	HookTimeout Duration `json:"hook_timeout"`

	// Instances is how many nodes run the command: InstancesOne (the
	// default) or InstancesEveryNode.
	Instances string `json:"instances,omitempty"`

	VIP       string `json:"vip,omitempty"`        // ADDR/BITS@DEV
	EpochFile string `json:"epoch_file,omitempty"` // the epoch is written here before each start

	// Nodes, if set, are the only nodes that may run the service, in order
	// of preference (a free service goes to the first one that can take it).
	Nodes []string `json:"nodes,omitempty"`
	// AntiAffinity names services never to run on the same node as this one.
	AntiAffinity []string `json:"anti_affinity,omitempty"`
}

// Kill modes, as systemd names them.
const (
	KillControlGroup = "control-group"
	KillMixed        = "mixed"
)

// How many nodes run a service's command.
const (
	// InstancesOne: exactly one node at a time, the owner of the service's
	// key, with fencing and a VIP (a NameNode, a JobTracker, a Redis).
	InstancesOne = "one"
	// InstancesEveryNode: every node that offers the service (lists it, not
	// by --pool) runs an instance of its own, restarted in place, and
	// registers it in etcd while it is healthy; tandem lb sends traffic to
	// the registered ones (seeds/001's Hue instances). Nothing is exclusive,
	// so there is no owner, fencing, VIP or epoch.
	InstancesEveryNode = "every-node"
)

// EveryNode reports whether every node offering s runs an instance.
func (s Service) EveryNode() bool { return s.Instances == InstancesEveryNode }

// FenceHook is one fence hook and its level: levels run in order until one
// succeeds; a level succeeds when every hook in it exits 0.
type FenceHook struct {
	Level   int      `json:"level"`
	Hook    string   `json:"hook"` // PATH [ARGS...]
	Timeout Duration `json:"timeout,omitempty"`
}

// Hooks are the operator's programs run around starts and stops.
type Hooks struct {
	PreStart  string `json:"pre_start,omitempty"`
	PostStart string `json:"post_start,omitempty"`
	PreStop   string `json:"pre_stop,omitempty"`
	PostStop  string `json:"post_stop,omitempty"`
	// Notify runs on every change of role or health (best effort).
	Notify string `json:"notify,omitempty"`
}

// WithDefaults fills in every zero setting.
func (s Service) WithDefaults() Service {
	def := func(d *Duration, v time.Duration) {
		if *d == 0 {
			*d = Duration(v)
		}
	}
	def(&s.StartTimeout, 30*time.Second)
	def(&s.StopTimeout, 10*time.Second)
	def(&s.RestartWindow, 5*time.Minute)
	def(&s.Ban, 10*time.Minute)
	def(&s.HookTimeout, 30*time.Second)
	if s.Restarts == 0 {
		s.Restarts = 3
	}
	if s.Fencing == "" {
		s.Fencing = FencingStrict
	}
	s.Health = slices.Clone(s.Health)
	for i := range s.Health {
		s.Health[i] = s.Health[i].WithDefaults()
	}
	for i := range s.Fence {
		if s.Fence[i].Timeout == 0 {
			s.Fence[i].Timeout = Duration(30 * time.Second)
		}
	}
	return s
}

// Validate checks the definition without looking at this machine: names,
// settings and the syntax of everything. Check looks at the machine.
func (s Service) Validate() error {
	if err := keys.ValidateName("service", s.Name); err != nil {
		return err
	}
	wrap := func(err error) error { return fmt.Errorf("service %s: %w", s.Name, err) }
	switch {
	case len(s.Command) == 0 || s.Command[0] == "":
		return wrap(errors.New("no command: give the command to run after --, or command: in the config file"))
	case s.Fencing != FencingStrict && s.Fencing != FencingSelf:
		return wrap(fmt.Errorf("fencing %q: want strict or self", s.Fencing))
	case s.KillMode != "" && s.KillMode != KillControlGroup && s.KillMode != KillMixed:
		return wrap(fmt.Errorf("kill mode %q: want control-group (stop signals every process) or mixed (the main process alone)", s.KillMode))
	case s.Instances != "" && s.Instances != InstancesOne && s.Instances != InstancesEveryNode:
		return wrap(fmt.Errorf("instances %q: want one or every-node", s.Instances))
	case s.EveryNode() && (s.VIP != "" || len(s.Fence) > 0 || s.EpochFile != "" || len(s.Nodes) > 0 || len(s.AntiAffinity) > 0 || len(s.Hooks.all()) > 0):
		return wrap(errors.New("instances every-node: every node offering it runs its own instance, so a VIP, fence hooks, an epoch file, nodes, anti-affinity and hooks do not apply (put tandem lb in front of the instances instead of a VIP)"))
	case !s.EveryNode() && s.Fencing == FencingStrict && len(s.Fence) == 0:
		return wrap(errors.New("fencing strict needs at least one fence hook (--fence LEVEL:PATH); to rely on the old node killing its own command in time instead, choose --fencing self explicitly"))
	case s.Restarts < 0:
		return wrap(fmt.Errorf("restarts %d: must not be negative", s.Restarts))
	}
	for name, d := range map[string]Duration{"start_timeout": s.StartTimeout, "stop_timeout": s.StopTimeout,
		"restart_window": s.RestartWindow, "ban": s.Ban, "hook_timeout": s.HookTimeout} {
		if d < 0 {
			return wrap(fmt.Errorf("%s %s: must not be negative", name, time.Duration(d)))
		}
	}
	for _, f := range s.Fence {
		if f.Level < 1 {
			return wrap(fmt.Errorf("fence hook %q: level %d, want 1 or more", f.Hook, f.Level))
		}
		if _, err := hook.Parse(f.Hook); err != nil {
			return wrap(fmt.Errorf("fence hook: %w", err))
		}
	}
	for kind, h := range s.Hooks.all() {
		if _, err := hook.Parse(h); err != nil {
			return wrap(fmt.Errorf("%s hook: %w", kind, err))
		}
	}
	if s.VIP != "" {
		if _, err := vip.Parse(s.VIP); err != nil {
			return wrap(err)
		}
	}
	if s.EpochFile != "" && !filepath.IsAbs(s.EpochFile) {
		return wrap(fmt.Errorf("epoch file %q: use an absolute path", s.EpochFile))
	}
	for _, n := range s.Nodes {
		if err := keys.ValidateName("node", n); err != nil {
			return wrap(err)
		}
	}
	for _, a := range s.AntiAffinity {
		if err := keys.ValidateName("service", a); err != nil {
			return wrap(fmt.Errorf("anti-affinity: %w", err))
		}
		if a == s.Name {
			return wrap(errors.New("anti-affinity with itself"))
		}
	}
	return nil
}

// Check validates what depends on this machine, before anything starts:
// the command can be found, the hooks are executable files, the health
// checks can be probed (hosts resolve, programs exist), the VIP's device
// exists.
func (s Service) Check() error {
	wrap := func(err error) error { return fmt.Errorf("service %s: %w", s.Name, err) }
	if len(s.Command) == 0 || s.Command[0] == "" {
		return wrap(errors.New("no command: give the command to run after --, or command: in the config file"))
	}
	if _, err := exec.LookPath(s.Command[0]); err != nil {
		return wrap(fmt.Errorf("command %q: %w", s.Command[0], err))
	}
	for _, c := range s.Health {
		if err := c.Validate(); err != nil {
			return wrap(err)
		}
	}
	for _, f := range s.Fence {
		h, _ := hook.Parse(f.Hook)
		if err := h.Validate(); err != nil {
			return wrap(fmt.Errorf("fence hook (level %d): %w", f.Level, err))
		}
	}
	for kind, text := range s.Hooks.all() {
		h, _ := hook.Parse(text)
		if err := h.Validate(); err != nil {
			return wrap(fmt.Errorf("%s hook: %w", kind, err))
		}
	}
	if s.VIP != "" {
		v, _ := vip.Parse(s.VIP)
		if err := v.Validate(); err != nil {
			return wrap(err)
		}
	}
	return nil
}

func (h Hooks) all() map[string]string {
	m := map[string]string{}
	for k, v := range map[string]string{"pre-start": h.PreStart, "post-start": h.PostStart, "pre-stop": h.PreStop,
		"post-stop": h.PostStop, "notify": h.Notify} {
		if v != "" {
			m[k] = v
		}
	}
	return m
}

// fenceLevels groups the fence hooks by level, in order.
func (s Service) fenceLevels() []hook.Level {
	byLevel := map[int]hook.Level{}
	for _, f := range s.Fence {
		h, _ := hook.Parse(f.Hook)
		h.Timeout = time.Duration(f.Timeout)
		byLevel[f.Level] = append(byLevel[f.Level], h)
	}
	levels := make([]int, 0, len(byLevel))
	for l := range byLevel {
		levels = append(levels, l)
	}
	sort.Ints(levels)
	out := make([]hook.Level, 0, len(levels))
	for _, l := range levels {
		out = append(out, byLevel[l])
	}
	return out
}

// canRunOn reports whether node may run the service at all.
func (s Service) canRunOn(node string) bool {
	return len(s.Nodes) == 0 || slices.Contains(s.Nodes, node)
}

// ParseFence parses the flag form LEVEL:PATH [ARGS...].
func ParseFence(s string) (FenceHook, error) {
	lvl, path, ok := strings.Cut(s, ":")
	var n int
	if _, err := fmt.Sscanf(lvl, "%d", &n); !ok || err != nil || fmt.Sprint(n) != lvl {
		return FenceHook{}, fmt.Errorf("--fence %q: want LEVEL:PATH, e.g. 1:/etc/tandem/fence-ipmi", s)
	}
	if n < 1 {
		return FenceHook{}, fmt.Errorf("--fence %q: level %d, want 1 or more", s, n)
	}
	if _, err := hook.Parse(path); err != nil {
		return FenceHook{}, fmt.Errorf("--fence %q: %w", s, err)
	}
	return FenceHook{Level: n, Hook: path}, nil
}

// Duration is a time.Duration written as "1.5s" in JSON and YAML; a bare
// number is taken as seconds.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err := json.Unmarshal(b, &secs); err != nil {
			return fmt.Errorf("duration %s: want a string like \"10s\" or a number of seconds", b)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
