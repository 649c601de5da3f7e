<?php
/* slotwarden: WordPress's own install and password change, run as the slot user with the
 * php CLI. Arguments (not secret): ACTION CONFIG-NAME URL. Secrets arrive as JSON on stdin. */
if ($argc != 4) { fwrite(STDERR, "usage: wordpress.php install|passwd CONFIG URL\n"); exit(2); }
[$slotwarden_script, $slotwarden_action, $config, $url] = $argv;
$slotwarden_in = json_decode(stream_get_contents(STDIN), true);
if (!is_array($slotwarden_in)) { fwrite(STDERR, "no JSON input on stdin\n"); exit(2); }
$parts = parse_url($url);
$_SERVER['HTTP_HOST'] = $parts['host'] . (isset($parts['port']) ? ':' . $parts['port'] : '');
$_SERVER['WORDPRESS_CONFIG'] = $config;
$_SERVER['REQUEST_URI'] = '/';
$_SERVER['SERVER_PROTOCOL'] = 'HTTP/1.1';
if ($slotwarden_action === 'install') {
    define('WP_INSTALLING', true);
}
require '/usr/share/wordpress/wp-load.php';
if ($slotwarden_action === 'install') {
    require_once ABSPATH . 'wp-admin/includes/upgrade.php';
    if (is_blog_installed()) { fwrite(STDERR, "WordPress is already installed in this database\n"); exit(1); }
    $r = wp_install($slotwarden_in['title'], $slotwarden_in['user'], $slotwarden_in['email'], false, '', wp_slash($slotwarden_in['password']));
    if (is_wp_error($r) || empty($r['user_id'])) { fwrite(STDERR, "wp_install failed\n"); exit(1); }
    echo "installed user " . $r['user_id'] . "\n";
} elseif ($slotwarden_action === 'passwd') {
    $user = get_user_by('login', $slotwarden_in['user']);
    if (!$user) { fwrite(STDERR, "no such WordPress user\n"); exit(1); }
    wp_set_password($slotwarden_in['password'], $user->ID);
    echo "password changed\n";
} else {
    fwrite(STDERR, "unknown action\n"); exit(2);
}
