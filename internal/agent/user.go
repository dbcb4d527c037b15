package agent

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/tandemhq/tandem"
)

// DefaultRunAs is the user an agent running as root runs attempts as when
// Config.RunAs is empty: the unprivileged account every Unix has, as Nomad's
// exec driver uses. A dedicated account (tandem-job, say) is better still
// where an operator can create one, since nobody is shared with other
// daemons; but an agent cannot count on one existing, and a default that
// fails on most machines would push operators to --allow-root.
const DefaultRunAs = "nobody"

// identity is a user attempts can run as, resolved from the user database.
type identity struct {
	name     string
	uid, gid uint32
	groups   []uint32 // supplementary groups, sorted, without duplicates
	home     string
}

func (id identity) String() string { return fmt.Sprintf("%s (uid %d)", id.name, id.uid) }

// root reports whether the identity is the superuser, whatever its name.
func (id identity) root() bool { return id.uid == 0 }

// lookupUser resolves a user name to an identity. An unknown user is an
// error saying so.
func lookupUser(name string) (identity, error) {
	if err := tandem.ValidateUserName(name); err != nil {
		return identity{}, errors.New(tandem.ErrorMessage(err))
	}
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return identity{}, fmt.Errorf("no user %q on this machine", name)
		}
		return identity{}, fmt.Errorf("look up user %q: %w", name, err)
	}
	return identityOf(u)
}

// currentUser is the identity the agent's process runs as. A uid with no
// entry in the user database (as containers often run) is still an
// identity: its name is the number, which no job can name.
func currentUser() (identity, error) {
	uid := os.Geteuid()
	u, err := user.LookupId(strconv.Itoa(uid))
	var unknown user.UnknownUserIdError
	if errors.As(err, &unknown) && uid != 0 {
		return identity{name: strconv.Itoa(uid), uid: uint32(uid), gid: uint32(os.Getegid()), home: os.Getenv("HOME")}, nil
	}
	if err != nil {
		return identity{}, fmt.Errorf("look up the agent's own user (uid %d): %w", uid, err)
	}
	id, err := identityOf(u)
	if err != nil {
		return identity{}, err
	}
	// What the process has, not what the user database says it should.
	id.gid = uint32(os.Getegid())
	return id, nil
}

func identityOf(u *user.User) (identity, error) {
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return identity{}, fmt.Errorf("user %q has uid %q, not a number", u.Username, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return identity{}, fmt.Errorf("user %q has gid %q, not a number", u.Username, u.Gid)
	}
	id := identity{name: u.Username, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	gids, err := u.GroupIds()
	if err != nil {
		return identity{}, fmt.Errorf("look up the groups of user %q: %w", u.Username, err)
	}
	for _, g := range gids {
		n, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return identity{}, fmt.Errorf("user %q is in group %q, not a number", u.Username, g)
		}
		id.groups = append(id.groups, uint32(n))
	}
	slices.Sort(id.groups)
	id.groups = slices.Compact(id.groups)
	return id, nil
}

// users decides who an attempt runs as: the default user, or a user its job
// names, if allowed.
type users struct {
	self    identity        // the agent's own user
	runAs   identity        // attempts' default user
	allowed map[string]bool // names a job may give besides runAs's
	root    bool            // attempts may run as uid 0
}

// newUsers checks the agent's user settings against who the agent runs as:
// every named user must exist; only root can run attempts as another user;
// root itself needs allowRoot.
func newUsers(runAs string, allow []string, allowRoot bool) (*users, error) {
	self, err := currentUser()
	if err != nil {
		return nil, err
	}
	u := &users{self: self, allowed: make(map[string]bool), root: allowRoot}
	switch {
	case runAs != "":
		if u.runAs, err = lookupUser(runAs); err != nil {
			return nil, fmt.Errorf("run attempts as %q: %w", runAs, err)
		}
	case self.root():
		if u.runAs, err = lookupUser(DefaultRunAs); err != nil {
			return nil, fmt.Errorf("the agent runs as root, so attempts run as %s unless told otherwise, but: %w; "+
				"name an unprivileged user to run them as", DefaultRunAs, err)
		}
	default:
		u.runAs = self
	}
	if err := u.check(u.runAs); err != nil {
		return nil, fmt.Errorf("run attempts as %s: %w", u.runAs, err)
	}
	for _, name := range allow {
		id, err := lookupUser(name)
		if err != nil {
			return nil, fmt.Errorf("allow user %q: %w", name, err)
		}
		if err := u.check(id); err != nil {
			return nil, fmt.Errorf("allow user %s: %w", id, err)
		}
		u.allowed[name] = true
	}
	return u, nil
}

// check reports why the agent cannot run attempts as id, or nil.
func (u *users) check(id identity) error {
	if id.root() && !u.root {
		return fmt.Errorf("%s is root, and this agent does not allow attempts to run as root", id)
	}
	if !u.self.root() && id.uid != u.self.uid {
		return fmt.Errorf("the agent runs as %s, not root, so it can run attempts only as itself", u.self)
	}
	return nil
}

// forJob returns who an attempt of a job naming user (empty: none) runs as,
// or why it cannot run. The user is looked up afresh, so a user created or
// removed while the agent runs is seen as it is now.
func (u *users) forJob(name string) (identity, error) {
	if name == "" || name == u.runAs.name {
		return u.runAs, nil
	}
	if !u.allowed[name] {
		return identity{}, fmt.Errorf("the agent does not allow user %q: jobs may run as %s", name, u.allowedList())
	}
	id, err := lookupUser(name)
	if err != nil {
		return identity{}, err
	}
	if err := u.check(id); err != nil {
		return identity{}, err
	}
	return id, nil
}

// allowedList names the users a job may run as, for messages.
func (u *users) allowedList() string {
	names := []string{u.runAs.name + " (its default)"}
	for _, n := range slices.Sorted(maps.Keys(u.allowed)) {
		if n != u.runAs.name {
			names = append(names, n)
		}
	}
	return strings.Join(names, ", ")
}

// credential is what an attempt's process runs with: nil when it runs as
// the agent's own user, which changes nothing (and needs no privilege).
func (u *users) credential(id identity) *syscall.Credential {
	if id.uid == u.self.uid && id.gid == u.self.gid {
		return nil
	}
	return &syscall.Credential{Uid: id.uid, Gid: id.gid, Groups: id.groups}
}

// checkSearchable reports why user id could not reach dir (a directory on
// the path to it is not searchable by id), or nil. It reads permission bits
// only; a directory with an ACL is given the benefit of the doubt.
func checkSearchable(dir string, id identity) error {
	if id.root() {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		if !searchable(st, id) && !hasACL(p) {
			return fmt.Errorf("%s (mode %s, owner uid %d, gid %d) is not searchable by %s",
				p, os.ModeDir|os.FileMode(st.Mode&0o777), st.Uid, st.Gid, id)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func searchable(st syscall.Stat_t, id identity) bool {
	switch {
	case st.Uid == id.uid:
		return st.Mode&0o100 != 0
	case st.Gid == id.gid || slices.Contains(id.groups, st.Gid):
		return st.Mode&0o010 != 0
	default:
		return st.Mode&0o001 != 0
	}
}

func hasACL(path string) bool {
	n, err := syscall.Getxattr(path, "system.posix_acl_access", nil)
	return err == nil && n > 0
}
