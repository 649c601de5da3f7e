<?php
/* slotwarden: WordPress's own install and password change, run by the php CLI as the slot user
 * in a session of its own (provisioner.as_tenant), through a minimal bootstrap that never
 * loads anything the tenant can write: not the slot's wp-config.php (the database settings
 * arrive on stdin), not its wp-content (WP_CONTENT_DIR, WP_PLUGIN_DIR and WPMU_PLUGIN_DIR point
 * into CONTENT-DIR, an empty directory root made for this run, so no plugin, theme,
 * mu-plugin or drop-in - db.php, object-cache.php, advanced-cache.php, fatal-error-handler.php,
 * maintenance.php - is ever included). Arguments (not secret): ACTION URL CONTENT-DIR.
 * Secrets arrive as JSON on stdin. */
if ($argc != 4) { fwrite(STDERR, "usage: wordpress.php install|passwd URL CONTENT-DIR\n"); exit(2); }
[$slotwarden_script, $slotwarden_action, $slotwarden_url, $slotwarden_content] = $argv;
$slotwarden_in = json_decode(stream_get_contents(STDIN), true);
if (!is_array($slotwarden_in) || !is_array($slotwarden_in['db'] ?? null)) {
    fwrite(STDERR, "no JSON input on stdin\n"); exit(2);
}
$parts = parse_url($slotwarden_url);
$_SERVER['HTTP_HOST'] = $parts['host'] . (isset($parts['port']) ? ':' . $parts['port'] : '');
$_SERVER['REQUEST_URI'] = '/';
$_SERVER['SERVER_PROTOCOL'] = 'HTTP/1.1';
$slotwarden_db = $slotwarden_in['db'];
define('DB_NAME', $slotwarden_db['name']);
define('DB_USER', $slotwarden_db['user']);
define('DB_PASSWORD', $slotwarden_db['password']);
define('DB_HOST', $slotwarden_db['host']);
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
define('WP_CONTENT_DIR', $slotwarden_content);
define('WP_PLUGIN_DIR', $slotwarden_content . '/plugins');
define('WPMU_PLUGIN_DIR', $slotwarden_content . '/mu-plugins');
define('WP_LANG_DIR', $slotwarden_content . '/languages');
define('WP_CONTENT_URL', $slotwarden_url . '/wp-content');
define('WP_HOME', $slotwarden_url);
define('WP_SITEURL', $slotwarden_url);
define('WP_CACHE', false);
define('DISALLOW_FILE_MODS', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_DISABLE_FATAL_ERROR_HANDLER', true);
$table_prefix = 'wp_';
if ($slotwarden_action === 'install') {
    define('WP_INSTALLING', true);
}
define('ABSPATH', '/usr/share/wordpress/');
require ABSPATH . 'wp-settings.php';
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
