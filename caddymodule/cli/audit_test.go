package cli

import (
	"bufio"
	"context"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
)

func TestCommandAuditOrder(t *testing.T) {
	t.Parallel()
	tb := newCmdTestBroker(t)
	tb.launchToken("read:orders:1")
	requireOK(t, tb.admin("revoke", "--level", "task", "--target", "task-9"))

	ids := func(out string) []string {
		return regexp.MustCompile(`(?m)^evt-\d+`).FindAllString(out, -1)
	}
	r := tb.admin("audit")
	requireOK(t, r)
	newest := ids(r.Stdout)
	require.GreaterOrEqual(t, len(newest), 4)
	require.Equal(t, "evt-000001", newest[len(newest)-1], "newest first by default")
	require.Regexp(t, `(?m)^`+newest[0]+`\s+\S+\s+admin_auth`, r.Stdout, "this command's own login is the newest")

	r = tb.admin("audit", "--oldest-first")
	requireOK(t, r)
	oldest := ids(r.Stdout)
	require.Equal(t, "evt-000001", oldest[0])
	require.Len(t, oldest, len(newest)+1, "one more login since")
}

func TestCommandAuditFollow(t *testing.T) {
	t.Parallel()
	tb := newCmdTestBroker(t)
	requireOK(t, tb.admin("revoke", "--level", "task", "--target", "before-follow"))

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	root := &cobra.Command{Use: "caddy", SilenceUsage: true}
	aw := &cobra.Command{Use: "agentwrit"}
	setupAgentwritCommand(aw)
	root.AddCommand(aw)
	// stdout and stderr through one pipe, read line by line as they come.
	pr, pw := io.Pipe()
	root.SetOut(pw)
	root.SetErr(pw)
	root.SetIn(strings.NewReader(""))
	root.SetArgs([]string{"agentwrit", "audit", "--follow", "--interval", "20ms", "--event-type", "token_revoked",
		"--broker", tb.URL, "--admin-secret", cmdTestSecret})
	done := make(chan error, 1)
	go func() {
		err := root.ExecuteContext(ctx)
		pw.Close()
		done <- err
	}()
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var seen []string
	waitFor := func(substr string) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				require.True(t, ok, "output ended before %q:\n%s", substr, strings.Join(seen, "\n"))
				seen = append(seen, l)
				if strings.Contains(l, substr) {
					return
				}
			case <-timeout:
				t.Fatalf("no %q in:\n%s", substr, strings.Join(seen, "\n"))
			}
		}
	}

	waitFor("matching events")
	require.Contains(t, strings.Join(seen, "\n"), "before-follow", "the first page is printed")
	requireOK(t, tb.admin("revoke", "--level", "task", "--target", "during-follow-1"))
	requireOK(t, tb.admin("revoke", "--level", "task", "--target", "during-follow-2"))
	waitFor("during-follow-2")
	cancel()
	require.NoError(t, <-done, "cancelling stops --follow cleanly")
	for l := range lines {
		seen = append(seen, l)
	}

	s := strings.Join(seen, "\n")
	rows := func(target string) int {
		return len(regexp.MustCompile(`(?m)^evt-.*target=`+target+`$`).FindAllString(s, -1))
	}
	require.Equal(t, 1, rows("before-follow"), "nothing printed twice")
	require.Equal(t, 1, rows("during-follow-1"))
	require.Less(t, strings.Index(s, "during-follow-1"), strings.Index(s, "during-follow-2"), "new events in chain order")
	require.NotContains(t, s, "admin_auth", "the filter holds for new events too")
}

var headLine = regexp.MustCompile(`head hash [0-9a-f]{64} \(evt-\d+\)`)

func verifyHead(t *testing.T, r cmdResult) string {
	t.Helper()
	requireOK(t, r)
	require.Contains(t, r.Stdout, "chain intact")
	h := headLine.FindString(r.Stdout)
	require.NotEmpty(t, h, r.Stdout)
	return h
}

// TestCommandAuditVerifyStableHead checks that verify reports the same head
// twice in a row when nothing else happens: offline, and over HTTP with an
// admin token; with the admin secret it reports the chain as it was before
// its own login.
func TestCommandAuditVerifyStableHead(t *testing.T) {
	tb := newCmdTestBroker(t)
	tb.launchToken("read:orders:1")
	requireOK(t, tb.admin("revoke", "--level", "agent", "--target", "a-1"))

	offline := func() cmdResult { return runCmd(t, "", "audit", "verify", "--database", tb.DBPath) }
	h1 := verifyHead(t, offline())
	require.Equal(t, h1, verifyHead(t, offline()), "offline verification writes nothing")

	r := tb.admin("audit", "verify")
	require.Equal(t, h1, verifyHead(t, r), "the login's own admin_auth is not in the head")
	require.Contains(t, r.Stdout, "4 events, chain intact")
	h2 := verifyHead(t, offline())
	require.NotEqual(t, h1, h2, "that login is in the chain all the same")
	require.Contains(t, offline().Stdout, "5 events, chain intact")

	r = tb.admin("login")
	requireOK(t, r)
	t.Setenv(envAdminToken, strings.TrimSpace(r.Stdout))
	t.Setenv(envAdminSecret, "")
	overHTTP := func() cmdResult { return runCmd(t, "", "audit", "verify", "--broker", tb.URL) }
	h3 := verifyHead(t, overHTTP())
	require.Equal(t, h3, verifyHead(t, overHTTP()), "with a token nothing is appended")
	require.Equal(t, h3, verifyHead(t, offline()), "HTTP and offline agree")

	// A missing database is an error naming it, not an empty chain.
	r = runCmd(t, "", "audit", "verify", "--database", tb.DBPath+".missing")
	require.ErrorContains(t, r.Err, ".missing")
}

// TestCommandAuditVerifyOfflineBroken finds an altered event in a stopped
// broker's database without serving it.
func TestCommandAuditVerifyOfflineBroken(t *testing.T) {
	t.Parallel()
	tb := newCmdTestBroker(t)
	tb.launchToken("read:orders:1")
	requireOK(t, tb.admin("revoke", "--level", "agent", "--target", "a-1"))
	tb.Stop()
	tamper(t, tb.DBPath, "evt-000003")
	r := runCmd(t, "", "audit", "verify", "--database", tb.DBPath)
	require.ErrorIs(t, r.Err, errChainBroken)
	require.Contains(t, r.Stdout, "chain BROKEN at index 2, id evt-000003")
	require.Contains(t, r.Stdout, "2 events before it verified")
}
