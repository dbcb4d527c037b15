package ui_test

import (
	"github.com/tandemhq/tandem/internal/server"
	"github.com/tandemhq/tandem/internal/ui"
)

// The real server has every page: its view, schedules, workflows and etcd's
// members (pageList and the cluster page ask by type assertion, so a
// method renamed on either side would silently drop a page).
var (
	_ ui.Service   = (*server.Server)(nil)
	_ ui.Schedules = (*server.Server)(nil)
	_ ui.Workflows = (*server.Server)(nil)
	_ ui.EtcdInfo  = (*server.Server)(nil)
)
