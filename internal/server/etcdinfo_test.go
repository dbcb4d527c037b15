package server_test

import (
	"testing"
)

// EtcdMembers against a real etcd: its one member, which leads and answered.
func TestEtcdMembers(t *testing.T) {
	c := newCluster(t, 1, nil)
	ml, st, err := c.nodes[0].srv.EtcdMembers(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(ml.Members) != 1 || st == nil {
		t.Fatalf("got %d members and status %v, want 1 member and a status", len(ml.Members), st)
	}
	m := ml.Members[0]
	if st.Leader != m.ID || st.Header.MemberId != m.ID || st.Version == "" {
		t.Errorf("status: leader %x answered by %x, version %q; want the one member %x (%s) for both, and a version", st.Leader, st.Header.MemberId, st.Version, m.ID, m.Name)
	}
}
